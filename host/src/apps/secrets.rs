//! Where an app's secrets may come from, and reading them safely.
//!
//! A deployer names a secret's *source*; the operator decides which sources
//! exist. Environment variables are handed out only when their name starts
//! with a prefix the operator allowed (`--secret-env-prefix`, default
//! `APP_SECRET_`), so the host's own variables (its admin token, cloud
//! credentials) are never reachable. Files are read only from the
//! operator's `--secrets-dir`: regular files, at most [`MAX_SECRET_BYTES`],
//! opened beneath that directory so neither `..` nor a symlink can escape
//! it (symlinks that stay inside, as Kubernetes secret volumes use, work).
//! A FIFO, a device or `/proc` file is refused without blocking.
//!
//! Reading touches the file system: callers run [`SecretPolicy::read`] off
//! the serving threads.

use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::apps::error::AppError;

/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// The default `--secret-env-prefix`.
pub const DEFAULT_ENV_PREFIX: &str = "APP_SECRET_";

/// Where a secret's value comes from: an environment variable of the host
/// process (`env:NAME`, or a bare `NAME`) or a file in the secrets
/// directory (`file:NAME`, or `file:/absolute/path` inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    pub fn parse(s: &str) -> Result<SecretSource, AppError> {
        let source = match s.split_once(':') {
            Some(("env", var)) => SecretSource::Env(var.to_string()),
            Some(("file", path)) => SecretSource::File(PathBuf::from(path)),
            Some(_) => {
                return Err(AppError::Invalid(format!(
                    "secret source {s:?} must be `env:VAR`, `file:NAME` or a bare variable name"
                )));
            }
            None => SecretSource::Env(s.to_string()),
        };
        match &source {
            SecretSource::Env(var) if var.is_empty() || var.contains(['=', '\0']) => {
                Err(AppError::Invalid(format!(
                    "secret source {s:?} names no valid environment variable"
                )))
            }
            SecretSource::File(path)
                if path.as_os_str().is_empty()
                    || path
                        .as_os_str()
                        .as_encoded_bytes()
                        .split(|b| *b == b'/')
                        .any(|segment| segment == b"." || segment == b"..")
                    || path.as_os_str().as_encoded_bytes().contains(&0) =>
            {
                Err(AppError::Invalid(format!(
                    "secret file {:?} must be a plain name in the host's secrets directory (no `.` or `..`)",
                    path.display().to_string()
                )))
            }
            _ => Ok(source),
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "env:{var}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl Serialize for SecretSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretSource::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The operator's rules for secret sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPolicy {
    /// `--secrets-dir`, as given and canonicalised; `None`: no file secrets.
    dir: Option<(PathBuf, PathBuf)>,
    /// `--secret-env-prefix` values: a variable is handed out only if its
    /// name starts with one of them.
    env_prefixes: Vec<String>,
}

impl SecretPolicy {
    /// Check the operator's settings: the directory must exist, prefixes
    /// must be non-empty.
    pub fn new(dir: Option<&Path>, env_prefixes: Vec<String>) -> Result<SecretPolicy, AppError> {
        if let Some(empty) = env_prefixes.iter().find(|p| p.trim().is_empty()) {
            return Err(AppError::Invalid(format!(
                "--secret-env-prefix {empty:?} is empty: it would hand every environment variable of the host to apps"
            )));
        }
        let dir = match dir {
            None => None,
            Some(dir) => {
                let canonical = dir.canonicalize().map_err(|e| {
                    AppError::Invalid(format!(
                        "--secrets-dir {} cannot be opened: {e}",
                        dir.display()
                    ))
                })?;
                if !canonical.is_dir() {
                    return Err(AppError::Invalid(format!(
                        "--secrets-dir {} is not a directory",
                        dir.display()
                    )));
                }
                Some((dir.to_path_buf(), canonical))
            }
        };
        Ok(SecretPolicy { dir, env_prefixes })
    }

    /// A policy that allows nothing (tests, benches).
    pub fn none() -> SecretPolicy {
        SecretPolicy {
            dir: None,
            env_prefixes: Vec::new(),
        }
    }

    /// Is `source` one this host hands out? The message names the rule.
    pub fn check(&self, source: &SecretSource) -> Result<(), AppError> {
        match source {
            SecretSource::Env(var) => {
                if self
                    .env_prefixes
                    .iter()
                    .any(|p| var.starts_with(p.as_str()))
                {
                    Ok(())
                } else if self.env_prefixes.is_empty() {
                    Err(AppError::Invalid(format!(
                        "env:{var} is not allowed: this host hands out no environment variables as secrets (the operator sets --secret-env-prefix)"
                    )))
                } else {
                    Err(AppError::Invalid(format!(
                        "env:{var} is not allowed: secrets from the environment must start with {} (the host's --secret-env-prefix)",
                        self.env_prefixes.join(" or ")
                    )))
                }
            }
            SecretSource::File(path) => self.relative(path).map(drop),
        }
    }

    /// A file source as a path relative to the secrets directory.
    fn relative<'a>(&self, path: &'a Path) -> Result<&'a Path, AppError> {
        let Some((given, canonical)) = &self.dir else {
            return Err(AppError::Invalid(format!(
                "file:{} is not allowed: file secrets are off on this host (the operator sets --secrets-dir)",
                path.display()
            )));
        };
        let relative = if path.is_absolute() {
            path.strip_prefix(given)
                .or_else(|_| path.strip_prefix(canonical))
                .map_err(|_| {
                    AppError::Invalid(format!(
                        "file:{} is not allowed: secret files must be inside the host's secrets directory {}",
                        path.display(),
                        given.display()
                    ))
                })?
        } else {
            path
        };
        if relative.as_os_str().is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(AppError::Invalid(format!(
                "file:{} must name a file inside the host's secrets directory",
                path.display()
            )));
        }
        Ok(relative)
    }

    /// Read a secret's value (a trailing newline is dropped). Errors name
    /// the source, never a value. Blocking: call off the serving threads.
    pub fn read(&self, source: &SecretSource) -> Result<String, AppError> {
        self.check(source)?;
        match source {
            SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                AppError::Invalid(format!("environment variable {var} is not set on the host"))
            }),
            SecretSource::File(path) => {
                let relative = self.relative(path)?;
                let Some((_, dir)) = &self.dir else {
                    unreachable!("relative() succeeded, so there is a secrets directory");
                };
                let file = open_beneath(dir, relative).map_err(|e| {
                    AppError::Invalid(format!("cannot open file:{}: {e}", path.display()))
                })?;
                read_secret_file(file).map_err(|e| {
                    AppError::Invalid(format!("cannot read file:{}: {e}", path.display()))
                })
            }
        }
    }
}

/// Open `relative` beneath `dir` without following anything out of it, and
/// without blocking on a FIFO.
fn open_beneath(dir: &Path, relative: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;

    let root = std::fs::File::open(dir)?;
    let name = std::ffi::CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the name contains a NUL byte"))?;
    /// `struct open_how` of openat2(2) (libc's is `non_exhaustive`).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2(2) with a valid directory fd, a NUL-terminated path
    // and a fully initialised `open_how` of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this descriptor to us.
        return Ok(unsafe { std::fs::File::from_raw_fd(fd as i32) });
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EXDEV) => Err(std::io::Error::other(
            "it resolves outside the secrets directory",
        )),
        // Kernels before 5.6 (or a seccomp filter) lack openat2: resolve
        // the path, check it stays inside, open the result.
        Some(libc::ENOSYS | libc::EPERM) => {
            let resolved = dir.join(relative).canonicalize()?;
            if !resolved.starts_with(dir) {
                return Err(std::io::Error::other(
                    "it resolves outside the secrets directory",
                ));
            }
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
                .open(resolved)
        }
        _ => Err(err),
    }
}

fn read_secret_file(mut file: std::fs::File) -> std::io::Result<String> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than the {MAX_SECRET_BYTES}-byte limit for secrets"
        )));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than the {MAX_SECRET_BYTES}-byte limit for secrets"
        )));
    }
    let value = String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8 text"))?;
    Ok(value.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "host-secrets-{tag}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    #[test]
    fn sources_parse_and_print_back() {
        assert_eq!(
            SecretSource::parse("API_KEY").unwrap(),
            SecretSource::Env("API_KEY".into())
        );
        assert_eq!(SecretSource::parse("env:X").unwrap().to_string(), "env:X");
        assert_eq!(
            SecretSource::parse("file:/run/s").unwrap().to_string(),
            "file:/run/s"
        );
        assert_eq!(
            SecretSource::parse("file:db/password").unwrap().to_string(),
            "file:db/password"
        );
        assert!(SecretSource::parse("file:../etc/passwd").is_err());
        assert!(SecretSource::parse("file:a/./b").is_err());
        assert!(SecretSource::parse("file:").is_err());
        assert!(SecretSource::parse("vault:x").is_err());
        assert!(SecretSource::parse("").is_err());
    }

    #[test]
    fn env_secrets_need_an_allowed_prefix() {
        let policy = SecretPolicy::new(None, vec!["APP_SECRET_".into()]).unwrap();
        assert!(
            policy
                .check(&SecretSource::Env("APP_SECRET_DB".into()))
                .is_ok()
        );
        let err = policy
            .check(&SecretSource::Env("HOST_ADMIN_TOKEN".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--secret-env-prefix"), "{err}");
        let err = SecretPolicy::none()
            .check(&SecretSource::Env("X".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no environment variables"), "{err}");
        assert!(SecretPolicy::new(None, vec![String::new()]).is_err());
    }

    #[test]
    fn files_come_only_from_the_secrets_dir() {
        let dir = scratch("files");
        std::fs::write(dir.0.join("token"), "s3cr3t\n").unwrap();
        std::fs::create_dir(dir.0.join("sub")).unwrap();
        std::fs::write(dir.0.join("sub/inner"), "inner").unwrap();
        std::os::unix::fs::symlink("token", dir.0.join("link-inside")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.0.join("link-outside")).unwrap();
        std::fs::write(dir.0.join("big"), vec![b'x'; MAX_SECRET_BYTES as usize + 1]).unwrap();
        let fifo = std::ffi::CString::new(dir.0.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let policy = SecretPolicy::new(Some(&dir.0), vec![]).unwrap();
        let read = |s: &str| policy.read(&SecretSource::parse(s).unwrap());
        assert_eq!(read("file:token").unwrap(), "s3cr3t");
        assert_eq!(read("file:sub/inner").unwrap(), "inner");
        assert_eq!(read("file:link-inside").unwrap(), "s3cr3t");
        assert_eq!(
            read(&format!("file:{}", dir.0.join("token").display())).unwrap(),
            "s3cr3t"
        );
        let outside = read("file:link-outside").unwrap_err().to_string();
        assert!(outside.contains("outside"), "{outside}");
        assert!(
            read("file:/proc/self/environ")
                .unwrap_err()
                .to_string()
                .contains("inside")
        );
        assert!(
            read("file:fifo")
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        assert!(read("file:big").unwrap_err().to_string().contains("limit"));
        assert!(
            read("file:sub")
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        assert!(read("file:missing").is_err());

        let off = SecretPolicy::none().check(&SecretSource::File("token".into()));
        assert!(off.unwrap_err().to_string().contains("--secrets-dir"));
    }
}
