//! Instances booted from a disk image, against the stand-in VMM: hostd makes
//! each a private root disk from the cached image, runs the real sandboxed
//! `virga-bootpick` on it before every boot (also after the guest reboots),
//! boots what the image's own grub.cfg names, attaches a config drive, and
//! keeps the root disk until the instance is deleted. An image that cannot
//! boot is refused with the picker's reason and leaves nothing behind.
//! Images fetched from a (stand-in) controller: a create that does not wait
//! is BUILDING while the image downloads, once for all its instances; a
//! delete ends the download; a hostd killed meanwhile carries on.

// Test helpers fail the test on any unexpected error.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use virga_test_support::disks::{debian_grub, ext4, gpt_disk, File, ROOT_UUID};
use virga_test_support::stub;

const IMAGE: &str = "0f0e0d0c-0000-4000-8000-00000000000a";
const VERSION: &str = "6.1.0-27-cloud-amd64";

/// Enough of a bzImage for the VMM's format check (the stand-in boots nothing).
fn fake_bzimage(tag: u8) -> Vec<u8> {
    let mut k = vec![tag; 0x400];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

/// A Debian-style GPT disk whose grub.cfg boots the kernel with `extra` on
/// its command line; None when mkfs.ext4 is missing (the test skips).
fn debian_image(extra: &str) -> Option<tempfile::NamedTempFile> {
    let grub = debian_grub(ROOT_UUID, "/boot", VERSION).replace(
        "console=ttyS0,115200",
        &format!("console=ttyS0,115200 {extra}"),
    );
    let kernel = fake_bzimage(0x27);
    let root = ext4(
        ROOT_UUID,
        &[
            File("/etc/os-release", b"ID=debian\n"),
            File("/boot/grub/grub.cfg", grub.as_bytes()),
            File(&format!("/boot/vmlinuz-{VERSION}"), &kernel),
            File(&format!("/boot/initrd.img-{VERSION}"), b"initrd 27"),
        ],
    )?;
    Some(gpt_disk(&[root]))
}

fn bootpick() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_hostd")).with_file_name("virga-bootpick");
    assert!(
        p.exists(),
        "{} is missing: build the workspace (cargo build -p virga-bootpick)",
        p.display()
    );
    p
}

/// hostd with the stand-in VMM and the real picker, the image in its cache.
fn hostd_with(image: &tempfile::NamedTempFile) -> Hostd {
    let h = start_with_fake_vmm(&format!("bootpick_binary = \"{}\"\n", bootpick().display()));
    let cache = h.dir.path().join("state/images");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(image.path(), cache.join(IMAGE)).unwrap();
    h
}

fn disk_spec(id: &str, gib: u32) -> String {
    serde_json::json!({
        "id": id, "vcpus": 1, "memory_mib": 64,
        "root_image": IMAGE, "root_disk_gib": gib,
        "config_drive": {
            "meta_data": {"uuid": id, "hostname": "vm1", "public_keys": {"k": "ssh-ed25519 AAAA"}},
            "user_data": "IyEvYmluL3NoCmVjaG8gaGkK",
        },
    })
    .to_string()
}

fn run_dir(h: &Hostd, id: &str) -> PathBuf {
    h.dir.path().join("state/instances").join(id)
}

/// An instance's root disk as its guest sees it, whichever form hostd gave
/// it (a raw file where the filesystem shares blocks, else a qcow2 overlay
/// over the cached image).
struct GuestDisk {
    root: hostd::root_disk::RootDisk,
    base: PathBuf,
}

impl GuestDisk {
    fn of(h: &Hostd, id: &str) -> GuestDisk {
        let root = hostd::root_disk::RootDisk::find(&run_dir(h, id)).expect("a root disk");
        GuestDisk {
            root,
            base: h.dir.path().join("state/images").join(IMAGE),
        }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    fn size(&self) -> u64 {
        self.root.size(&self.base).unwrap()
    }

    fn overlay(&self, writable: bool) -> vmm::virtio::block::qcow2::Overlay {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(self.path())
            .unwrap();
        vmm::virtio::block::qcow2::Overlay::open(&file, &self.base, writable).unwrap()
    }

    /// Writes as the guest would (through the VMM's format driver).
    fn write_at(&self, at: u64, data: &[u8]) {
        if self.root.is_overlay() {
            let o = self.overlay(true);
            o.write_vectored(&[std::io::IoSlice::new(data)], at)
                .unwrap();
            o.flush().unwrap();
        } else {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(self.path())
                .unwrap();
            w.seek(SeekFrom::Start(at)).unwrap();
            w.write_all(data).unwrap();
        }
    }

    fn read_at(&self, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        if self.root.is_overlay() {
            self.overlay(false)
                .read_vectored(&mut [std::io::IoSliceMut::new(&mut buf)], at)
                .unwrap();
        } else {
            let mut r = std::fs::File::open(self.path()).unwrap();
            r.seek(SeekFrom::Start(at)).unwrap();
            r.read_exact(&mut buf).unwrap();
        }
        buf
    }
}

fn vmm_config(h: &Hostd, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run_dir(h, id).join("vmm.json")).unwrap()).unwrap()
}

#[test]
fn a_disk_image_boots_from_its_own_boot_with_a_private_root_disk() {
    let Some(image) = debian_image("") else {
        return;
    };
    let h = hostd_with(&image);
    let (status, created) = api(&h, "POST", "/instances", &disk_spec("disk-1", 1));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "running");

    let dir = run_dir(&h, "disk-1");
    let root = GuestDisk::of(&h, "disk-1");
    assert_eq!(root.size(), 1 << 30, "the size asked for");
    let config = vmm_config(&h, "disk-1");
    assert_eq!(
        config["cmdline"], "root=PARTUUID=1234 ro console=ttyS0,115200",
        "grub.cfg's default entry; its serial console kept, not doubled"
    );
    let kernel = config["kernel"].as_str().unwrap();
    assert_eq!(std::fs::read(kernel).unwrap(), fake_bzimage(0x27));
    let initrd = config["initramfs"].as_str().unwrap();
    assert_eq!(std::fs::read(initrd).unwrap(), b"initrd 27");
    let disks = config["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{disks:?}");
    assert_eq!(disks[0]["path"], root.path().display().to_string());
    assert_eq!(disks[0]["read_only"], false);
    if root.root.is_overlay() {
        assert_eq!(disks[0]["base"], root.base.display().to_string());
    } else {
        assert!(disks[0].get("base").is_none(), "{disks:?}");
    }
    assert_eq!(
        disks[1]["path"],
        dir.join("config-drive.img").display().to_string()
    );
    assert_eq!(disks[1]["read_only"], true);
    assert_eq!(
        config["on_reboot"], "exit",
        "hostd picks again after a reboot"
    );

    // What the guest writes stays across a stop and a start; the cached
    // image is untouched.
    let at = (1 << 30) - 4096;
    root.write_at(at, b"guest data");
    let stop = api(
        &h,
        "POST",
        "/instances/disk-1/actions/stop",
        r#"{"hard": true}"#,
    );
    assert_eq!(stop.0, 200, "{}", stop.1);
    let start = api(&h, "POST", "/instances/disk-1/actions/start", "");
    assert_eq!(
        (start.0, &start.1["starts"]),
        (200, &2.into()),
        "{}",
        start.1
    );
    assert_eq!(root.read_at(at, 10), b"guest data");
    let cached = std::fs::read(h.dir.path().join("state/images").join(IMAGE)).unwrap();
    assert_eq!(cached, std::fs::read(image.path()).unwrap());

    // A second instance of the image has its own root disk.
    let (status, second) = api(&h, "POST", "/instances", &disk_spec("disk-2", 2));
    assert_eq!(status, 201, "{second}");
    let other = GuestDisk::of(&h, "disk-2");
    assert_eq!(other.size(), 2 << 30);
    assert_eq!(other.read_at(at, 10), vec![0u8; 10]);

    // Deleted with the instance; the cached image stays.
    assert_eq!(api(&h, "DELETE", "/instances/disk-1", "").0, 204);
    assert!(!dir.exists(), "the root disk goes with its instance");
    assert!(h.dir.path().join("state/images").join(IMAGE).exists());
    assert_eq!(api(&h, "DELETE", "/instances/disk-2", "").0, 204);
}

#[test]
fn new_root_disks_boot_the_images_kept_pick_and_a_used_one_is_picked_again() {
    let Some(image) = debian_image("") else {
        return;
    };
    let h = hostd_with(&image);
    let images = h.dir.path().join("state/images");
    let kept = images.join(format!("{IMAGE}.boot"));
    let (status, created) = api(&h, "POST", "/instances", &disk_spec("kept-1", 1));
    assert_eq!(status, 201, "{created}");
    let first = vmm_config(&h, "kept-1");
    assert!(
        Path::new(first["kernel"].as_str().unwrap()).starts_with(run_dir(&h, "kept-1")),
        "the image's first root disk is picked: {first}"
    );
    wait_for("the image's pick to be kept", || {
        kept.join("pick.json").exists()
    });

    // The next root disk of the image boots what was kept, as picked.
    let (status, created) = api(&h, "POST", "/instances", &disk_spec("kept-2", 2));
    assert_eq!(status, 201, "{created}");
    let second = vmm_config(&h, "kept-2");
    let kernel = Path::new(second["kernel"].as_str().unwrap());
    assert!(kernel.starts_with(&kept), "{second}");
    assert_eq!(std::fs::read(kernel).unwrap(), fake_bzimage(0x27));
    let initrd = second["initramfs"].as_str().unwrap();
    assert_eq!(std::fs::read(initrd).unwrap(), b"initrd 27");
    assert_eq!(second["cmdline"], first["cmdline"]);

    // Once its guest ran, a root disk is the guest's: picked again.
    for action in [r#"stop"#, "start"] {
        let body = if action == "stop" {
            r#"{"hard": true}"#
        } else {
            ""
        };
        let (status, r) = api(
            &h,
            "POST",
            &format!("/instances/kept-2/actions/{action}"),
            body,
        );
        assert_eq!(status, 200, "{r}");
    }
    let again = vmm_config(&h, "kept-2");
    let kernel = Path::new(again["kernel"].as_str().unwrap());
    assert!(kernel.starts_with(run_dir(&h, "kept-2")), "{again}");
    assert_eq!(std::fs::read(kernel).unwrap(), fake_bzimage(0x27));

    // The kept pick outlives the instance it was made for.
    assert_eq!(api(&h, "DELETE", "/instances/kept-1", "").0, 204);
    assert_eq!(
        std::fs::read(kept.join("kernel")).unwrap(),
        fake_bzimage(0x27)
    );
    assert_eq!(api(&h, "DELETE", "/instances/kept-2", "").0, 204);
}

#[test]
fn a_cached_image_stays_while_an_instance_uses_it_and_goes_once_unused() {
    let Some(image) = debian_image("") else {
        return;
    };
    let h = start_with_fake_vmm(&format!(
        "bootpick_binary = \"{}\"\nunused_image_secs = 1\n",
        bootpick().display()
    ));
    let images = h.dir.path().join("state/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(image.path(), images.join(IMAGE)).unwrap();
    let (cached, kept) = (images.join(IMAGE), images.join(format!("{IMAGE}.boot")));
    let (status, created) = api(&h, "POST", "/instances", &disk_spec("used-1", 1));
    assert_eq!(status, 201, "{created}");
    wait_for("the image's pick to be kept", || {
        kept.join("pick.json").exists()
    });
    // Several sweeps pass over it while the instance uses it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(cached.exists() && kept.exists(), "an image in use stays");

    assert_eq!(api(&h, "DELETE", "/instances/used-1", "").0, 204);
    wait_for("the unused image and its kept pick to go", || {
        !cached.exists() && !kept.exists()
    });
}

#[test]
fn after_the_guest_reboots_hostd_picks_again_and_starts_a_new_vmm() {
    let Some(image) = debian_image("fake.reboot_once_after_ms=300") else {
        return;
    };
    let h = hostd_with(&image);
    let (status, created) = api(&h, "POST", "/instances", &disk_spec("reboot-1", 1));
    assert_eq!(status, 201, "{created}");
    let record = virga_test_support::wait::until(
        "the instance to run its second VMM",
        Duration::from_secs(20),
        || {
            let (_, i) = api(&h, "GET", "/instances/reboot-1", "");
            (i["starts"] == 2 && i["state"] == "running").then_some(i)
        },
    );
    assert_eq!(record["state"], "running", "{record}");
    assert_eq!(api(&h, "DELETE", "/instances/reboot-1", "").0, 204);
}

#[test]
fn an_image_that_cannot_boot_is_refused_with_the_reason_and_leaves_nothing() {
    let Some(root) = ext4(ROOT_UUID, &[File("/etc/os-release", b"ID=debian\n")]) else {
        return;
    };
    let image = gpt_disk(&[root]);
    let h = hostd_with(&image);
    let (status, refused) = api(&h, "POST", "/instances", &disk_spec("broken-1", 1));
    assert_eq!(status, 422, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the root disk cannot boot: nothing to boot on the image"),
        "{message}"
    );
    assert_eq!(api(&h, "GET", "/instances/broken-1", "").0, 404);
    assert!(!run_dir(&h, "broken-1").exists(), "nothing left behind");

    // A root image names its own initramfs and command line.
    let mut spec: serde_json::Value = serde_json::from_str(&disk_spec("bad-2", 1)).unwrap();
    spec["cmdline"] = "console=ttyS0".into();
    let (status, bad) = api(&h, "POST", "/instances", &spec.to_string());
    assert_eq!(status, 400, "{bad}");
    let mut spec: serde_json::Value = serde_json::from_str(&disk_spec("bad-3", 1)).unwrap();
    spec["config_drive"]["user_data"] = "not base64!".into();
    let (status, bad) = api(&h, "POST", "/instances", &spec.to_string());
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("base64"),
        "{bad}"
    );
}

/// Snapshot uploads a stand-in controller received: (path, body).
type Uploads = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A controller's image endpoint whose answers the test holds back: it
/// sends the first half of the image, then the rest once `release` is
/// called. Other requests (registration) get an empty 204.
struct ImageServer {
    addr: String,
    requests: Arc<AtomicUsize>,
    released: Arc<(Mutex<bool>, Condvar)>,
    uploads: Uploads,
}

/// `image` as a sparse stream, its zero blocks as holes.
fn sparse_stream(image: &[u8]) -> Vec<u8> {
    let mut file = tempfile::tempfile().unwrap();
    for (i, block) in image.chunks(4096).enumerate() {
        if block.iter().any(|b| *b != 0) {
            file.seek(SeekFrom::Start(i as u64 * 4096)).unwrap();
            file.write_all(block).unwrap();
        }
    }
    file.set_len(image.len() as u64).unwrap();
    hostd_proto::sparse::encode_all(file).unwrap()
}

impl ImageServer {
    /// Serves `image` as image IMAGE, as the controller does one a storage
    /// host holds: a redirect to the storage host (this server too), which
    /// sends a sparse stream to a host that asks for one and comes without
    /// the host's token; any other image is 404.
    fn start(image: Vec<u8>) -> ImageServer {
        Self::serving(image, true)
    }

    /// As [`ImageServer::start`], as a controller that predates sparse
    /// streams: always the plain bytes.
    fn start_plain(image: Vec<u8>) -> ImageServer {
        Self::serving(image, false)
    }

    fn serving(image: Vec<u8>, can_sparse: bool) -> ImageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let sparse = Arc::new(sparse_stream(&image));
        let image = Arc::new(image);
        let uploads: Uploads = Arc::default();
        let (count, gate, received) = (requests.clone(), released.clone(), uploads.clone());
        let here = addr.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                // A connection reset before it was taken is no reason to stop.
                let Ok(mut stream) = stream else { continue };
                let (plain, sparse) = (image.clone(), sparse.clone());
                let addr = here.clone();
                let (count, gate) = (count.clone(), gate.clone());
                let received = received.clone();
                std::thread::spawn(move || {
                    let Some(req) = stub::read_request(&mut stream) else {
                        return;
                    };
                    if req.method == "PUT" && req.path.ends_with("/file") {
                        received
                            .lock()
                            .unwrap()
                            .push((req.path.clone(), req.body.clone()));
                        stub::write_response(&mut stream, &stub::Response::empty(204));
                        return;
                    }
                    let ticketed = format!("/v1/images/{IMAGE}/raw");
                    if can_sparse && req.path == format!("/internal/v1/images/{IMAGE}/raw") {
                        let _ = stream.write_all(
                            format!(
                                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{addr}{ticketed}?expires=9&ticket=t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                        return;
                    }
                    let fetch = match can_sparse {
                        true => ticketed,
                        false => format!("/internal/v1/images/{IMAGE}/raw"),
                    };
                    let ticket_kept = req.query == "expires=9&ticket=t";
                    if can_sparse
                        && req.path == fetch
                        && (req.header("authorization").is_some() || !ticket_kept)
                    {
                        // The host's token is for the controller only.
                        stub::write_response(&mut stream, &stub::Response::empty(403));
                        return;
                    }
                    if !req.path.starts_with("/internal/v1/images/") && req.path != fetch {
                        stub::write_response(&mut stream, &stub::Response::empty(204));
                        return;
                    }
                    if req.path != fetch {
                        stub::write_response(&mut stream, &stub::Response::empty(404));
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let media_type = hostd_proto::sparse::CONTENT_TYPE;
                    let (image, content_type) =
                        if can_sparse && req.header("accept") == Some(media_type) {
                            (&sparse, media_type)
                        } else {
                            (&plain, "application/octet-stream")
                        };
                    let half = image.len() / 2;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        image.len()
                    );
                    if stream.write_all(head.as_bytes()).is_err()
                        || stream.write_all(&image[..half]).is_err()
                    {
                        return;
                    }
                    let (lock, cv) = &*gate;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                    drop(open);
                    let _ = stream.write_all(&image[half..]);
                });
            }
        });
        ImageServer {
            addr,
            requests,
            released,
            uploads,
        }
    }

    fn release(&self) {
        let (lock, cv) = &*self.released;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    fn downloads(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// hostd with the stand-in VMM and the real picker, fetching images from
/// `server`.
fn hostd_fetching_from(server: &ImageServer) -> Hostd {
    start_with_fake_vmm(&format!(
        "bootpick_binary = \"{}\"\ncontroller_url = \"http://{}\"\nadvertise_url = \"http://127.0.0.1:9\"\n",
        bootpick().display(),
        server.addr
    ))
}

fn part_files(h: &Hostd) -> Vec<String> {
    std::fs::read_dir(h.dir.path().join("state/images"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".part-"))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    virga_test_support::wait::until(what, Duration::from_secs(20), || f().then_some(()));
}

#[test]
fn a_create_that_does_not_wait_is_building_while_its_image_downloads_once_for_all() {
    let Some(image) = debian_image("") else {
        return;
    };
    let server = ImageServer::start(std::fs::read(image.path()).unwrap());
    let h = hostd_fetching_from(&server);
    for id in ["dl-1", "dl-2"] {
        let (status, created) = api(&h, "POST", "/instances?wait=false", &disk_spec(id, 1));
        assert_eq!(
            (status, &created["state"]),
            (202, &"building".into()),
            "{created}"
        );
    }
    wait_for("the download to begin", || server.downloads() == 1);
    std::thread::sleep(Duration::from_millis(300));
    for id in ["dl-1", "dl-2"] {
        let (_, record) = api(&h, "GET", &format!("/instances/{id}"), "");
        assert_eq!(record["state"], "building", "{record}");
        // Nothing else is taken while it is prepared.
        let (status, refused) = api(&h, "POST", &format!("/instances/{id}/actions/start"), "");
        assert_eq!(status, 409, "{refused}");
    }
    server.release();
    for id in ["dl-1", "dl-2"] {
        wait_state(&h, id, "running");
    }
    assert_eq!(server.downloads(), 1, "one download for both instances");
    assert!(part_files(&h).is_empty());
    let cached = std::fs::read(h.dir.path().join("state/images").join(IMAGE)).unwrap();
    assert_eq!(cached, std::fs::read(image.path()).unwrap());
    for id in ["dl-1", "dl-2"] {
        assert_eq!(api(&h, "DELETE", &format!("/instances/{id}"), "").0, 204);
    }
}

#[test]
fn an_instance_deleted_while_its_image_downloads_leaves_nothing_behind() {
    let Some(image) = debian_image("") else {
        return;
    };
    let server = ImageServer::start(std::fs::read(image.path()).unwrap());
    let h = hostd_fetching_from(&server);
    let (status, _) = api(&h, "POST", "/instances?wait=false", &disk_spec("gone-1", 1));
    assert_eq!(status, 202);
    wait_for("part of the image to arrive", || !part_files(&h).is_empty());
    // A hard stop has nothing to stop yet; a delete ends the download.
    let (status, _) = api(
        &h,
        "POST",
        "/instances/gone-1/actions/stop",
        r#"{"hard": true}"#,
    );
    assert_eq!(status, 409);
    let started = std::time::Instant::now();
    assert_eq!(api(&h, "DELETE", "/instances/gone-1", "").0, 204);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(api(&h, "GET", "/instances/gone-1", "").0, 404);
    wait_for("the partial download to be removed", || {
        part_files(&h).is_empty()
    });
    assert!(!run_dir(&h, "gone-1").exists());
    assert!(!h.dir.path().join("state/images").join(IMAGE).exists());
    server.release();
}

#[test]
fn hostd_killed_while_an_image_downloads_carries_on_when_it_comes_back() {
    let Some(image) = debian_image("") else {
        return;
    };
    let server = ImageServer::start(std::fs::read(image.path()).unwrap());
    let h = hostd_fetching_from(&server);
    let (status, _) = api(&h, "POST", "/instances?wait=false", &disk_spec("back-1", 1));
    assert_eq!(status, 202);
    // The part file is made when the controller answers, before the
    // redirect to the image's data is followed: the download is under way
    // once the image server has counted it too.
    wait_for("part of the image to arrive", || {
        server.downloads() == 1 && !part_files(&h).is_empty()
    });
    let h = restart(h);
    // The new hostd dropped the old part and asked again.
    wait_for("a second download", || server.downloads() == 2);
    let (_, record) = api(&h, "GET", "/instances/back-1", "");
    assert_eq!(record["state"], "building", "{record}");
    server.release();
    let record = wait_state(&h, "back-1", "running");
    assert_eq!(record["starts"], 1, "{record}");
    assert!(part_files(&h).is_empty());
    assert_eq!(api(&h, "DELETE", "/instances/back-1", "").0, 204);
}

#[test]
fn a_create_that_does_not_wait_ends_in_error_saying_why() {
    let Some(root) = ext4(ROOT_UUID, &[File("/etc/os-release", b"ID=debian\n")]) else {
        return;
    };
    let unbootable = gpt_disk(&[root]);
    let server = ImageServer::start_plain(std::fs::read(unbootable.path()).unwrap());
    server.release();
    let h = hostd_fetching_from(&server);

    // An image that cannot boot: the image's fault.
    let (status, _) = api(&h, "POST", "/instances?wait=false", &disk_spec("bad-1", 1));
    assert_eq!(status, 202);
    let record = wait_state(&h, "bad-1", "error");
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.contains("nothing to boot on the image"), "{reason}");
    assert_eq!(record["image_fault"], true, "{record}");

    // An image the controller does not have: not the image's fault.
    let missing = disk_spec("bad-2", 1).replace(IMAGE, "0f0e0d0c-0000-4000-8000-0000000000ff");
    let (status, _) = api(&h, "POST", "/instances?wait=false", &missing);
    assert_eq!(status, 202);
    let record = wait_state(&h, "bad-2", "error");
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.contains("404"), "{reason}");
    assert!(record.get("image_fault").is_none(), "{record}");
    for id in ["bad-1", "bad-2"] {
        assert_eq!(api(&h, "DELETE", &format!("/instances/{id}"), "").0, 204);
        assert!(!run_dir(&h, id).exists());
    }
}

/// A snapshot copies the root disk with the guest paused for the moment of
/// the copy, answers, and uploads the copy to the controller as the image's
/// data; the guest runs on and the copy is gone afterwards.
#[test]
fn a_snapshot_uploads_a_copy_of_the_root_disk_to_the_controller() {
    let Some(image) = debian_image("") else {
        return;
    };
    let server = ImageServer::start(std::fs::read(image.path()).unwrap());
    server.release();
    let h = hostd_fetching_from(&server);
    let (status, body) = api(&h, "POST", "/instances", &disk_spec("snap-1", 0));
    assert_eq!(status, 201, "{body}");
    // What the guest wrote is in the snapshot.
    let root = GuestDisk::of(&h, "snap-1");
    root.write_at(4096, b"written by the guest");
    let snapshot = "5a5a5a5a-0000-4000-8000-000000000001";
    let (status, body) = api(
        &h,
        "POST",
        "/instances/snap-1/snapshot",
        &format!(r#"{{"image_id": "{snapshot}"}}"#),
    );
    assert_eq!(status, 202, "{body}");
    wait_for("the upload", || !server.uploads.lock().unwrap().is_empty());
    let (path, data) = server.uploads.lock().unwrap()[0].clone();
    assert_eq!(path, format!("/internal/v1/images/{snapshot}/file"));
    // A sparse stream (the root disk's data, not its holes) of the disk.
    let whole = root.read_at(0, root.size() as usize);
    let got = hostd_proto::sparse::decode_all(&data, u64::MAX).unwrap();
    assert!(got == whole, "the snapshot is the disk the guest sees");
    let (_, record) = api(&h, "GET", "/instances/snap-1", "");
    assert_eq!(
        record["state"], "running",
        "resumed after the copy: {record}"
    );
    wait_for("the copy to be removed", || {
        std::fs::read_dir(h.dir.path().join("state/snapshots"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });

    // Refused: a bad image id; an instance without a root disk.
    let (status, _) = api(
        &h,
        "POST",
        "/instances/snap-1/snapshot",
        r#"{"image_id": "../etc"}"#,
    );
    assert_eq!(status, 400);
    let k = kernel(h.dir.path());
    assert_eq!(
        api(&h, "POST", "/instances", &fake_spec("plain-1", &k, 64, "")).0,
        201
    );
    let (status, body) = api(
        &h,
        "POST",
        "/instances/plain-1/snapshot",
        &format!(r#"{{"image_id": "{snapshot}"}}"#),
    );
    assert_eq!(status, 409, "{body}");
    for id in ["snap-1", "plain-1"] {
        assert_eq!(api(&h, "DELETE", &format!("/instances/{id}"), "").0, 204);
    }
}

/// A stopped instance is resized (vCPUs, memory, a bigger root disk with
/// the guest's data in it); the old root disk is kept until the resize is
/// confirmed, and a revert brings it and the old size back.
#[test]
fn a_resize_grows_the_instance_and_can_be_reverted_or_confirmed() {
    let Some(image) = debian_image("") else {
        return;
    };
    let h = hostd_with(&image);
    assert_eq!(api(&h, "POST", "/instances", &disk_spec("rs-1", 1)).0, 201);
    let root = GuestDisk::of(&h, "rs-1");
    let kept = root.root.kept();
    root.write_at((1 << 30) - 4096, b"before the resize");
    let resize = |body: &str| api(&h, "POST", "/instances/rs-1/resize", body);
    let bigger = r#"{"vcpus": 2, "memory_mib": 128, "root_disk_gib": 2}"#;
    assert_eq!(resize(bigger).0, 409, "a running instance is stopped first");
    let stop = |h: &Hostd| {
        api(
            h,
            "POST",
            "/instances/rs-1/actions/stop",
            r#"{"hard": true}"#,
        )
        .0
    };
    assert_eq!(stop(&h), 200);

    let (status, record) = resize(bigger);
    assert_eq!(status, 200, "{record}");
    assert_eq!(
        (record["vcpus"].as_u64(), record["memory_mib"].as_u64()),
        (Some(2), Some(128))
    );
    assert_eq!(record["resized_from"]["vcpus"], 1, "{record}");
    assert_eq!(root.size(), 2 << 30);
    assert!(kept.exists());
    assert_eq!(root.read_at((1 << 30) - 4096, 17), b"before the resize");
    assert_eq!(root.read_at((2 << 30) - 4096, 17), vec![0u8; 17]);
    assert_eq!(resize(bigger).0, 409, "one resize at a time");
    assert_eq!(api(&h, "POST", "/instances/rs-1/actions/start", "").0, 200);
    let config = vmm_config(&h, "rs-1");
    assert_eq!(
        (config["vcpus"].as_u64(), config["memory_mib"].as_u64()),
        (Some(2), Some(128))
    );
    assert_eq!(
        api(&h, "POST", "/instances/rs-1/resize/revert", "").0,
        409,
        "stopped first"
    );

    // Reverted: the old size and root disk.
    assert_eq!(stop(&h), 200);
    let (status, record) = api(&h, "POST", "/instances/rs-1/resize/revert", "");
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["vcpus"], 1);
    assert!(record.get("resized_from").is_none(), "{record}");
    assert_eq!(root.size(), 1 << 30);
    assert!(!kept.exists());

    // Confirmed: the old disk goes; a disk never shrinks.
    assert_eq!(resize(bigger).0, 200);
    let (status, _) = api(&h, "POST", "/instances/rs-1/resize/confirm", "");
    assert_eq!(status, 200);
    assert!(!kept.exists());
    assert_eq!(root.size(), 2 << 30);
    let (status, body) = resize(r#"{"vcpus": 1, "memory_mib": 64, "root_disk_gib": 1}"#);
    assert_eq!(status, 400, "{body}");
    assert_eq!(api(&h, "POST", "/instances/rs-1/resize/confirm", "").0, 409);
    assert_eq!(api(&h, "DELETE", "/instances/rs-1", "").0, 204);
}

#[test]
fn a_volume_boots_from_its_own_boot_through_its_layers() {
    let Some(image) = debian_image("from-a-volume") else {
        return;
    };
    let h = start_with_fake_vmm(&format!("bootpick_binary = \"{}\"\n", bootpick().display()));
    // A volume as storaged keeps one after two snapshots on ext4: a qcow2
    // overlay over a qcow2 layer over the raw data.
    let vols = h.dir.path().join("storage");
    std::fs::create_dir_all(&vols).unwrap();
    let base = vols.join("base.raw");
    std::fs::copy(image.path(), &base).unwrap();
    let size = std::fs::metadata(&base).unwrap().len();
    let layer = vols.join("layer.qcow2");
    vmm::virtio::block::qcow2::create_overlay(&layer, "base", size).unwrap();
    let top = vols.join("volume.qcow2");
    vmm::virtio::block::qcow2::create_layer(&top, "layer", "qcow2", size).unwrap();
    let spec = |id: &str, volume: serde_json::Value| {
        serde_json::json!({"id": id, "vcpus": 1, "memory_mib": 64, "root_volume": volume})
            .to_string()
    };
    let volume = serde_json::json!({
        "id": "vol0", "path": top, "base": base, "layers": [layer], "serial": "vol0",
    });
    let (status, created) = api(&h, "POST", "/instances", &spec("bfv-1", volume.clone()));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "running");
    let config = vmm_config(&h, "bfv-1");
    assert!(
        config["cmdline"]
            .as_str()
            .unwrap()
            .contains("from-a-volume"),
        "picked from the volume's grub.cfg: {config}"
    );
    let disks = config["disks"].as_array().unwrap();
    assert_eq!(disks[0]["path"], top.display().to_string(), "{disks:?}");
    assert_eq!(disks[0]["layers"][0], layer.display().to_string());
    assert_eq!(disks[0]["base"], base.display().to_string());
    assert!(
        !run_dir(&h, "bfv-1").join("root.img").exists()
            && !run_dir(&h, "bfv-1").join("root.qcow2").exists(),
        "no root disk of its own"
    );
    assert_eq!(api(&h, "DELETE", "/instances/bfv-1", "").0, 204);
    assert!(top.exists(), "the volume outlives the instance");

    // A raw volume; and bad ones refused.
    let raw = serde_json::json!({"id": "vol1", "path": base, "serial": "vol1"});
    let (status, created) = api(&h, "POST", "/instances", &spec("bfv-2", raw));
    assert_eq!(status, 201, "{created}");
    assert_eq!(api(&h, "DELETE", "/instances/bfv-2", "").0, 204);
    for bad in [
        serde_json::json!({"id": "v", "path": "relative.raw", "serial": "v"}),
        serde_json::json!({"id": "v", "path": top, "layers": [layer], "serial": "v"}),
        serde_json::json!({"id": "v", "path": top, "base": base, "read_only": true, "serial": "v"}),
    ] {
        let (status, body) = api(&h, "POST", "/instances", &spec("bfv-3", bad.clone()));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let mut both: serde_json::Value = serde_json::from_str(&spec("bfv-4", volume)).unwrap();
    both["root_image"] = serde_json::json!(IMAGE);
    let (status, body) = api(&h, "POST", "/instances", &both.to_string());
    assert_eq!(status, 400, "{body}");
}
