//! Swift container ACLs (`X-Container-Read`, `X-Container-Write`), the
//! elements Swift's Keystone middleware understands that we honour:
//!
//! - `.r:*`: anyone, with or without a token, reads the objects (read ACL
//!   only); `.rlistings`: with `.r:*`, anyone lists the container too;
//! - `PROJECT:USER`, `PROJECT:*`, `*:USER`, `*:*` (Keystone ids): tokens of
//!   those users read (read ACL: objects and listings) or write objects
//!   (write ACL).
//!
//! Referrer rules (`.r:example.com`, `.r:-...`) and legacy names are refused
//! rather than stored and ignored.

/// One ACL, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    /// `.r:*`
    pub anyone: bool,
    /// `.rlistings`
    pub listings: bool,
    /// (project, user), `None` for `*`.
    pub grants: Vec<(Option<String>, Option<String>)>,
}

/// The longest ACL header kept.
const MAX_LEN: usize = 4096;

impl Acl {
    /// Parses a header's value; `read` says which header (only a read ACL
    /// may name referrers). An empty value is an empty ACL.
    pub fn parse(value: &str, read: bool) -> Result<Acl, String> {
        if value.len() > MAX_LEN {
            return Err(format!("ACLs are at most {MAX_LEN} bytes"));
        }
        let mut acl = Acl::default();
        for element in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match element {
                ".r:*" if read => acl.anyone = true,
                ".rlistings" if read => acl.listings = true,
                e if e.starts_with('.') => {
                    return Err(format!("ACL element {e:?} is not supported"));
                }
                e => {
                    let Some((project, user)) = e.split_once(':') else {
                        return Err(format!(
                            "ACL element {e:?} is not PROJECT_ID:USER_ID (either may be *)"
                        ));
                    };
                    let any = |s: &str| (s != "*").then(|| s.to_owned());
                    if project.is_empty() || user.is_empty() || user.contains(':') {
                        return Err(format!("ACL element {e:?} is not PROJECT_ID:USER_ID"));
                    }
                    acl.grants.push((any(project), any(user)));
                }
            }
        }
        Ok(acl)
    }

    /// Whether a token of `user` in `project` is granted.
    pub fn grants(&self, project: &str, user: &str) -> bool {
        self.grants.iter().any(|(p, u)| {
            p.as_deref().is_none_or(|p| p == project) && u.as_deref().is_none_or(|u| u == user)
        })
    }

    /// Anyone may list: `.r:*` with `.rlistings`.
    pub fn public_listing(&self) -> bool {
        self.anyone && self.listings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_project_grants_parse() {
        let acl = Acl::parse(".r:*, .rlistings,p1:u1,p2:*,*:u3", true).unwrap();
        assert!(acl.anyone && acl.public_listing());
        assert!(acl.grants("p1", "u1") && !acl.grants("p1", "u2"));
        assert!(acl.grants("p2", "anyone"));
        assert!(acl.grants("p9", "u3"));
        assert!(!acl.grants("p9", "u9"));
        let objects_only = Acl::parse(".r:*", true).unwrap();
        assert!(objects_only.anyone && !objects_only.public_listing());
        assert_eq!(Acl::parse("", true).unwrap(), Acl::default());
        assert!(Acl::parse("*:*", false).unwrap().grants("x", "y"));
    }

    #[test]
    fn what_is_not_honoured_is_refused() {
        for bad in [
            ".r:example.com",
            ".r:-evil.com",
            ".rlistings2",
            "justaname",
            "p:",
            ":u",
            "p:u:x",
        ] {
            assert!(Acl::parse(bad, true).is_err(), "{bad}");
        }
        assert!(
            Acl::parse(".r:*", false).is_err(),
            "no referrers in a write ACL"
        );
        assert!(Acl::parse(&"p:u,".repeat(2000), true).is_err());
    }
}
