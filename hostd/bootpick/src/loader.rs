//! Boot loader configuration, read as text and never evaluated: Boot Loader
//! Spec entries (`loader/entries/*.conf`) and GRUB's `grub.cfg`. What they
//! name is a [`Entry`]: a kernel path, initrd paths and a command line.

use std::cmp::Ordering;

/// What one boot entry names; paths are as written (see [`clean_path`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub title: String,
    pub linux: String,
    pub initrds: Vec<String>,
    pub options: String,
    /// The filesystem the paths are on, when the entry says (GRUB's
    /// `search --fs-uuid --set=root UUID`).
    pub fs_uuid: Option<String>,
}

/// A Boot Loader Spec entry file: `key value` lines; `initrd` and `options`
/// may repeat. None without a `linux` line.
pub fn bls_entry(text: &str, file_name: &str) -> Option<Entry> {
    let mut e = Entry {
        title: file_name.trim_end_matches(".conf").to_owned(),
        ..Entry::default()
    };
    let mut options = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(|c: char| c.is_ascii_whitespace())
            .map(|(k, v)| (k, v.trim()))
            .unwrap_or((line, ""));
        match key {
            "title" if !value.is_empty() => e.title = value.to_owned(),
            "linux" => e.linux = value.to_owned(),
            "initrd" => e
                .initrds
                .extend(value.split_whitespace().map(str::to_owned)),
            "options" => options.push(value.to_owned()),
            _ => {}
        }
    }
    e.options = without_variables(&options.join(" "));
    (!e.linux.is_empty()).then_some(e)
}

/// Orders BLS entries as boot loaders do: by file name, newest version
/// first (see [`compare_versions`]).
pub fn sort_bls<T>(entries: &mut [(String, T)]) {
    entries.sort_by(|a, b| compare_versions(&b.0, &a.0));
}

/// The entry `grub.cfg` boots by default: the menu entry `set default=`
/// names (by index or by title or id, top level only), else the first.
/// Entries in submenus count only as their submenu, as in GRUB's index.
pub fn grub_default(text: &str) -> Option<Entry> {
    let words = |line: &str| -> Vec<String> { split_words(line) };
    let mut default: Option<String> = None;
    let mut entries: Vec<(String, Option<String>, Entry)> = Vec::new();
    let mut current: Option<(String, Option<String>, Entry)> = None;
    let mut depth = 0usize;
    let mut entry_depth = 0usize;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w = words(line);
        let Some(first) = w.first().map(String::as_str) else {
            continue;
        };
        match first {
            "menuentry" | "submenu" => {
                if depth == 0 && current.is_none() {
                    let title = w.get(1).cloned().unwrap_or_default();
                    let id = w
                        .iter()
                        .position(|x| x == "--id" || x == "$menuentry_id_option")
                        .and_then(|i| w.get(i + 1).cloned());
                    let entry = Entry {
                        title: title.clone(),
                        ..Entry::default()
                    };
                    // A submenu counts as one entry that cannot boot by itself.
                    current = Some((title, id, entry));
                    entry_depth = depth;
                    if first == "submenu" {
                        if let Some(c) = current.as_mut() {
                            c.2.linux.clear();
                        }
                    }
                }
                if line.ends_with('{') {
                    depth += 1;
                }
                continue;
            }
            "}" => {
                depth = depth.saturating_sub(1);
                if depth == entry_depth {
                    if let Some(c) = current.take() {
                        entries.push(c);
                    }
                }
                continue;
            }
            _ => {}
        }
        if line.ends_with('{') {
            depth += 1;
        }
        match (first, current.as_mut()) {
            ("set", None) if depth <= 1 => {
                if let Some(v) = w.get(1).and_then(|a| a.strip_prefix("default=")) {
                    // Only a literal: `${saved_entry}` and friends are not
                    // evaluated.
                    if !v.contains('$') {
                        default = Some(v.to_owned());
                    }
                }
            }
            ("linux" | "linuxefi" | "linux16", Some(c)) if depth == entry_depth + 1 => {
                if let Some(path) = w.get(1) {
                    c.2.linux = path.clone();
                    c.2.options = without_variables(&w[2..].join(" "));
                }
            }
            ("initrd" | "initrdefi" | "initrd16", Some(c)) if depth == entry_depth + 1 => {
                c.2.initrds = w[1..].to_vec();
            }
            ("search", Some(c)) => {
                if let Some(i) = w.iter().position(|x| x == "--set=root") {
                    // `search --no-floppy --fs-uuid --set=root UUID`
                    if w.iter().any(|x| x == "--fs-uuid") {
                        c.2.fs_uuid = w.get(i + 1).cloned();
                    }
                }
            }
            _ => {}
        }
    }
    let chosen = match default.as_deref() {
        Some(d) => match d.parse::<usize>() {
            Ok(i) => entries.get(i),
            Err(_) => entries
                .iter()
                .find(|(title, id, _)| title == d || id.as_deref() == Some(d)),
        },
        None => None,
    }
    .or(entries.first());
    chosen
        .map(|(_, _, e)| e.clone())
        .filter(|e| !e.linux.is_empty())
        .or_else(|| {
            entries
                .into_iter()
                .map(|c| c.2)
                .find(|e| !e.linux.is_empty())
        })
}

/// Splits a GRUB line into words: quotes ('' and "") group, unquoted `;`
/// and `{` end nothing here (menu entry titles are the quoted word).
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut has_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                has_word = true;
            }
            (None, c) if c.is_ascii_whitespace() => {
                if has_word || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    has_word = false;
                }
            }
            (None, c) => word.push(c),
        }
    }
    if has_word || !word.is_empty() {
        words.push(word);
    }
    words
}

/// A command line without the words that name variables (`$kernelopts`,
/// `${extra_cmdline}`): they are never evaluated.
fn without_variables(options: &str) -> String {
    options
        .split_whitespace()
        .filter(|w| !w.contains('$'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A path as GRUB or BLS writes it, made absolute on its filesystem: a
/// leading device (`(hd0,gpt2)`, `($root)`) dropped. None for a path that
/// still names a variable.
pub fn clean_path(path: &str) -> Option<String> {
    let path = match path.strip_prefix('(') {
        Some(rest) => rest.split_once(')')?.1,
        None => path,
    };
    if path.contains('$') || path.is_empty() {
        return None;
    }
    Some(if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    })
}

/// Compares version strings the way `sort -V` and boot loaders do: runs of
/// digits by value, other runs byte by byte.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let (da, db) = (digits(a), digits(b));
        let ord = if da > 0 && db > 0 {
            let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            a = &a[da..];
            b = &b[db..];
            o
        } else {
            let o = a[0].cmp(&b[0]);
            a = &a[1..];
            b = &b[1..];
            o
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Debian 12's generated grub.cfg (trimmed).
    const DEBIAN: &str = r#"
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi
function load_video {
  insmod all_video
}
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-0b3f' {
	load_video
	insmod gzio
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root 0b3f1a2c-aaaa-bbbb-cccc-000000000001
	echo	'Loading Linux 6.1.0-27-cloud-amd64 ...'
	linux	/boot/vmlinuz-6.1.0-27-cloud-amd64 root=PARTUUID=1234 ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-6.1.0-27-cloud-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-0b3f' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-26-cloud-amd64' --class debian $menuentry_id_option 'gnulinux-6.1.0-26-advanced' {
		linux	/boot/vmlinuz-6.1.0-26-cloud-amd64 root=PARTUUID=1234 ro
		initrd	/boot/initrd.img-6.1.0-26-cloud-amd64
	}
}
"#;

    #[test]
    fn debians_grub_cfg_boots_its_first_entry() {
        let e = grub_default(DEBIAN).unwrap();
        assert_eq!(e.title, "Debian GNU/Linux");
        assert_eq!(e.linux, "/boot/vmlinuz-6.1.0-27-cloud-amd64");
        assert_eq!(e.initrds, ["/boot/initrd.img-6.1.0-27-cloud-amd64"]);
        assert_eq!(
            e.options,
            "root=PARTUUID=1234 ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"
        );
        assert_eq!(
            e.fs_uuid.as_deref(),
            Some("0b3f1a2c-aaaa-bbbb-cccc-000000000001")
        );
    }

    #[test]
    fn a_default_by_index_title_or_id_is_honoured_and_submenus_count_once() {
        let cfg = |default: &str| {
            format!(
                "set default=\"{default}\"\nmenuentry 'A' --id a {{\n linux /a\n}}\nsubmenu 'S' {{\n menuentry 'S1' {{\n  linux /s1\n }}\n}}\nmenuentry 'B' --id b {{\n linux /b root=x\n initrd /i1 /i2\n}}\n"
            )
        };
        assert_eq!(grub_default(&cfg("0")).unwrap().linux, "/a");
        assert_eq!(grub_default(&cfg("2")).unwrap().linux, "/b");
        assert_eq!(grub_default(&cfg("B")).unwrap().initrds, ["/i1", "/i2"]);
        assert_eq!(grub_default(&cfg("b")).unwrap().options, "root=x");
        // The submenu itself cannot boot: the first entry that can.
        assert_eq!(grub_default(&cfg("1")).unwrap().linux, "/a");
        // Out of range or unknown: the first.
        assert_eq!(grub_default(&cfg("9")).unwrap().linux, "/a");
        assert_eq!(grub_default(&cfg("nope")).unwrap().linux, "/a");
    }

    #[test]
    fn broken_grub_configs_give_nothing_or_the_first_entry_and_never_panic() {
        assert_eq!(grub_default(""), None);
        assert_eq!(grub_default("menuentry 'x' {\n}\n"), None);
        assert_eq!(grub_default("}}}}\n{{{{\nlinux /x\n"), None);
        // An entry never closed is a syntax error to GRUB too.
        assert_eq!(grub_default("menuentry 'unterminated {\n linux /k\n"), None);
        let deep = "menuentry 'x' {\n".repeat(10_000) + "linux /k\n";
        let _ = grub_default(&deep);
        // Variables are not evaluated: they are left out.
        let e = grub_default("menuentry 'x' {\n linux /k root=$root ro ${extra}\n}\n").unwrap();
        assert_eq!(e.options, "ro");
    }

    #[test]
    fn bls_entries_are_read_and_sorted_newest_first() {
        let fedora = "title Fedora Linux (6.11.4-301.fc41.x86_64)\nversion 6.11.4-301.fc41.x86_64\nlinux /vmlinuz-6.11.4-301.fc41.x86_64\ninitrd /initramfs-6.11.4-301.fc41.x86_64.img\noptions root=UUID=abc ro rootflags=subvol=root $tuned_params\n";
        let e = bls_entry(fedora, "x-6.11.4.conf").unwrap();
        assert_eq!(e.title, "Fedora Linux (6.11.4-301.fc41.x86_64)");
        assert_eq!(e.linux, "/vmlinuz-6.11.4-301.fc41.x86_64");
        assert_eq!(e.initrds, ["/initramfs-6.11.4-301.fc41.x86_64.img"]);
        assert_eq!(e.options, "root=UUID=abc ro rootflags=subvol=root");
        assert_eq!(bls_entry("title nothing to boot\n", "n.conf"), None);
        let mut entries: Vec<(String, Entry)> = ["a-6.9.0.conf", "a-6.10.2.conf", "a-6.10.10.conf"]
            .iter()
            .map(|n| (n.to_string(), Entry::default()))
            .collect();
        sort_bls(&mut entries);
        assert_eq!(entries[0].0, "a-6.10.10.conf");
        assert_eq!(entries[2].0, "a-6.9.0.conf");
    }

    #[test]
    fn versions_compare_by_number() {
        use Ordering::*;
        assert_eq!(compare_versions("6.1.0-27", "6.1.0-9"), Greater);
        assert_eq!(compare_versions("5.10.0", "6.1.0"), Less);
        assert_eq!(compare_versions("6.01", "6.1"), Equal);
        assert_eq!(compare_versions("6.1", "6.1.1"), Less);
        assert_eq!(compare_versions("", ""), Equal);
    }

    #[test]
    fn paths_lose_their_device_and_keep_no_variables() {
        assert_eq!(
            clean_path("/boot/vmlinuz").as_deref(),
            Some("/boot/vmlinuz")
        );
        assert_eq!(
            clean_path("(hd0,gpt2)/vmlinuz").as_deref(),
            Some("/vmlinuz")
        );
        assert_eq!(clean_path("($root)/boot/x").as_deref(), Some("/boot/x"));
        assert_eq!(clean_path("vmlinuz").as_deref(), Some("/vmlinuz"));
        assert_eq!(clean_path("$prefix/vmlinuz"), None);
        assert_eq!(clean_path("(unterminated"), None);
        assert_eq!(clean_path(""), None);
    }
}
