//! Dropping root after binding (`-u USER`), as memcached does.
//!
//! The listeners (client port, unix socket, cluster endpoint, metrics) are bound first, so
//! that privileged ports work; then the process takes the user's uid and primary gid and
//! gives up every supplementary group. glibc applies set*id to every thread of the process,
//! so the runtimes already started (cluster, metrics) change identity too. The unix socket
//! file is handed to the user first: memcached creates it after dropping, so with its
//! default mask 0700 only that user may connect, and meshcached keeps that meaning.
//!
//! memcached refuses to run as root without `-u`; meshcached runs (the zero-setup demo must
//! work in a root container) and says clearly that it does.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why the process could not take the user's identity; it must not run on as root then.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("-u {0}: no such user")]
    NoSuchUser(String),
    #[error("-u {0}: cannot look the user up: {1}")]
    Lookup(String, #[source] io::Error),
    #[error("-u {user}: cannot give the unix socket {path} to the user: {source}")]
    Chown {
        user: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("-u {user}: cannot {step}: {source}")]
    Switch {
        user: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Looks `name` up in the user database (getpwnam_r).
pub fn lookup(name: &str) -> Result<User, PrivilegeError> {
    let cname = CString::new(name).map_err(|_| PrivilegeError::NoSuchUser(name.into()))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); getpwnam_r fills
        // it with pointers into `buf`, which outlives every read of them below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid C string, struct, buffer with its true length, and out-pointer.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(PrivilegeError::Lookup(
                name.into(),
                io::Error::from_raw_os_error(rc),
            ));
        }
        if found.is_null() {
            return Err(PrivilegeError::NoSuchUser(name.into()));
        }
        // SAFETY: getpwnam_r succeeded, so pw_name points to a C string in `buf`.
        let real = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy();
        return Ok(User {
            name: real.into_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
}

/// Applies `-u` once everything is bound: as root, becomes `user` (after giving it the
/// unix socket file `socket`, if any); as root without `-u`, warns; as another user, `-u`
/// has nothing to do (memcached ignores it too) and a differing one is reported.
pub fn settle(node: &str, user: Option<&str>, socket: Option<&Path>) -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match (root, user) {
        (true, None) => {
            tracing::warn!(
                %node,
                "running as root: memcached refuses to; give -u USER to drop to that user \
                 after binding"
            );
            Ok(())
        }
        (true, Some(name)) => {
            let user = lookup(name)?;
            if let Some(path) = socket {
                chown(path, &user)?;
            }
            become_user(&user)?;
            tracing::info!(%node, user = %user.name, uid = user.uid, gid = user.gid, "dropped root privileges (-u)");
            Ok(())
        }
        (false, Some(name)) => {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            if lookup(name).map(|u| u.uid).ok() != Some(uid) {
                tracing::warn!(
                    %node,
                    user = name,
                    uid,
                    "-u has no effect: not started as root, running as the current user"
                );
            }
            Ok(())
        }
        (false, None) => Ok(()),
    }
}

fn chown(path: &Path, user: &User) -> Result<(), PrivilegeError> {
    let err = |source| PrivilegeError::Chown {
        user: user.name.clone(),
        path: path.to_path_buf(),
        source,
    };
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: a valid C string path and plain ids.
    if unsafe { libc::chown(cpath.as_ptr(), user.uid, user.gid) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Groups first, then the gid, then the uid (after setuid the others are no longer
/// allowed); then checks that root cannot be taken back.
fn become_user(user: &User) -> Result<(), PrivilegeError> {
    let fail = |step| PrivilegeError::Switch {
        user: user.name.clone(),
        step,
        source: io::Error::last_os_error(),
    };
    // SAFETY: an empty group list (null pointer with length 0) is valid for setgroups.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(fail("drop the supplementary groups"));
    }
    // SAFETY: plain ids.
    if unsafe { libc::setgid(user.gid) } != 0 {
        return Err(fail("set the group id"));
    }
    // SAFETY: plain ids.
    if unsafe { libc::setuid(user.uid) } != 0 {
        return Err(fail("set the user id"));
    }
    // SAFETY: plain id; succeeding here would mean the drop did not hold.
    if user.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(PrivilegeError::Switch {
            user: user.name.clone(),
            step: "keep root from being taken back",
            source: io::Error::other("setuid(0) still succeeds"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_and_unknown_ones_refused() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(matches!(
            lookup("no-such-user-here"),
            Err(PrivilegeError::NoSuchUser(_))
        ));
        assert!(matches!(
            lookup("nul\0byte"),
            Err(PrivilegeError::NoSuchUser(_))
        ));
    }
}
