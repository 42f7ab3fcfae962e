//! The command line of one sandboxed run, built without touching anything: `prlimit` sets
//! the resource limits, `setpriv` (when the tools process is root) drops to the sandbox's
//! own uid, and `bwrap` builds the sandbox — every namespace new, no environment, the
//! system's programs read-only, a private tmpfs as the working directory — and starts the
//! interpreter in it. `docs/tools.md` explains each choice.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use shared::config::RunCodeConfig;

/// Open files per process: the interpreter and a few files of its own.
const MAX_OPEN_FILES: u64 = 64;
/// The uid and gid the program has inside the sandbox (its user namespace): not 0, so
/// nothing in it even looks like root.
const INNER_ID: &str = "1000";
/// `PATH` inside the sandbox: only the read-only system directories exist there.
const INNER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The working directory and `HOME`: the private tmpfs.
const WORKDIR: &str = "/tmp";
/// Files under `/etc` the interpreters use: the dynamic linker's cache, and the
/// alternatives many `/usr/bin` programs link through (`awk`, …). No accounts, no keys.
const ETC_FILES: &[&str] = &["/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime"];
/// Top-level directories the interpreters may need besides `/usr`: shown read-only when
/// they are directories, recreated when they are links into `/usr` (merged-usr systems).
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// The language of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Shell,
}

impl Language {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "python" => Some(Language::Python),
            "shell" => Some(Language::Shell),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Shell => "shell",
        }
    }
}

/// How a host's system directory appears in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemDir {
    /// A real directory, bound read-only.
    Dir(PathBuf),
    /// A symbolic link (e.g. `/lib -> usr/lib`), recreated as the same link.
    Link { path: PathBuf, target: PathBuf },
}

/// The host's system directories, as they are now.
pub fn system_dirs() -> Vec<SystemDir> {
    SYSTEM_DIRS
        .iter()
        .map(Path::new)
        .filter_map(|path| {
            let meta = std::fs::symlink_metadata(path).ok()?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(path).ok()?;
                Some(SystemDir::Link {
                    path: path.to_owned(),
                    target,
                })
            } else if meta.is_dir() {
                Some(SystemDir::Dir(path.to_owned()))
            } else {
                None
            }
        })
        .collect()
}

/// Who the sandbox runs as on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostUser {
    /// The tools process is root: drop to this uid (and gid), one no other process uses, so
    /// the process limit counts this sandbox alone (root is exempt from it).
    Dedicated(u32),
    /// The tools process is not root: run as it, with the process limit raised by the
    /// processes its uid already has (the limit counts them all).
    Own { existing: u64 },
}

/// Everything one run's command line depends on.
#[derive(Debug)]
pub struct Plan<'a> {
    pub config: &'a RunCodeConfig,
    pub system: &'a [SystemDir],
    pub user: HostUser,
    pub language: Language,
    pub code: &'a str,
}

const MIB: u64 = 1024 * 1024;

/// The program and its arguments.
pub fn argv(plan: &Plan<'_>) -> Vec<OsString> {
    let c = plan.config;
    let nproc = match plan.user {
        HostUser::Dedicated(_) => c.max_processes,
        HostUser::Own { existing } => existing.saturating_add(c.max_processes),
    };
    let tmpfs_bytes = c.tmpfs_mb.saturating_mul(MIB);
    // The CPU limit's soft value sends SIGXCPU (reported as `cpu`), the hard one a second
    // later SIGKILL for a program that catches it.
    let cpu = format!(
        "--cpu={}:{}",
        c.cpu_seconds,
        c.cpu_seconds.saturating_add(1)
    );
    let mut out: Vec<OsString> = vec![c.prlimit.clone().into_os_string()];
    for limit in [
        format!("--nproc={nproc}"),
        format!("--as={}", c.memory_mb.saturating_mul(MIB)),
        cpu,
        format!("--nofile={MAX_OPEN_FILES}"),
        "--core=0".to_owned(),
        format!("--fsize={tmpfs_bytes}"),
        "--".to_owned(),
    ] {
        out.push(limit.into());
    }
    if let HostUser::Dedicated(uid) = plan.user {
        out.push(c.setpriv.clone().into_os_string());
        for a in [
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            "--no-new-privs".to_owned(),
            "--".to_owned(),
        ] {
            out.push(a.into());
        }
    }
    out.push(c.bwrap.clone().into_os_string());
    let strs = |out: &mut Vec<OsString>, items: &[&str]| {
        out.extend(items.iter().map(OsString::from));
    };
    strs(
        &mut out,
        &[
            // Every namespace new (user, pid, net, ipc, uts, cgroup), the user namespace
            // required rather than tried, and none creatable inside.
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--cap-drop",
            "ALL",
            "--uid",
            INNER_ID,
            "--gid",
            INNER_ID,
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/usr",
            "/usr",
        ],
    );
    for dir in plan.system {
        match dir {
            SystemDir::Dir(path) => {
                out.push("--ro-bind".into());
                out.push(path.clone().into_os_string());
                out.push(path.clone().into_os_string());
            }
            SystemDir::Link { path, target } => {
                out.push("--symlink".into());
                out.push(target.clone().into_os_string());
                out.push(path.clone().into_os_string());
            }
        }
    }
    for file in ETC_FILES {
        strs(&mut out, &["--ro-bind-try", file, file]);
    }
    strs(&mut out, &["--proc", "/proc", "--dev", "/dev", "--size"]);
    out.push(tmpfs_bytes.to_string().into());
    strs(
        &mut out,
        &[
            "--tmpfs",
            WORKDIR,
            // The root bwrap builds is a tmpfs of its own: read-only, so `/tmp` is the only
            // place to write (and it is bounded).
            "--remount-ro",
            "/",
            "--chdir",
            WORKDIR,
            "--setenv",
            "HOME",
            WORKDIR,
            "--setenv",
            "TMPDIR",
            WORKDIR,
            "--setenv",
            "PATH",
            INNER_PATH,
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--",
        ],
    );
    match plan.language {
        Language::Python => {
            out.push(c.python.clone().into_os_string());
            // Isolated mode: no PYTHON* variables, no user site, no script directory on
            // the path.
            strs(&mut out, &["-I", "-c"]);
        }
        Language::Shell => {
            out.push(c.shell.clone().into_os_string());
            out.push("-c".into());
        }
    }
    out.push(plan.code.into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan<'a>(config: &'a RunCodeConfig, system: &'a [SystemDir], user: HostUser) -> Plan<'a> {
        Plan {
            config,
            system,
            user,
            language: Language::Python,
            code: "print(1)",
        }
    }

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn root_drops_to_the_dedicated_uid_under_the_limits() {
        let config = RunCodeConfig::default();
        let system = [
            SystemDir::Link {
                path: "/lib".into(),
                target: "usr/lib".into(),
            },
            SystemDir::Dir("/sbin".into()),
        ];
        let argv = strings(&argv(&plan(&config, &system, HostUser::Dedicated(990_001))));
        assert_eq!(argv[0], "/usr/bin/prlimit");
        for limit in [
            "--nproc=32",
            "--as=268435456",
            "--cpu=5:6",
            "--fsize=16777216",
            "--core=0",
        ] {
            assert!(argv.contains(&limit.to_owned()), "{limit}: {argv:?}");
        }
        let setpriv = argv.iter().position(|a| a == "/usr/bin/setpriv").unwrap();
        let bwrap = argv.iter().position(|a| a == "/usr/bin/bwrap").unwrap();
        assert!(setpriv < bwrap);
        assert!(argv.contains(&"--reuid=990001".to_owned()));
        let joined = argv.join(" ");
        for option in [
            "--unshare-all --unshare-user --disable-userns --die-with-parent --new-session --clearenv --cap-drop ALL",
            "--ro-bind /usr /usr",
            "--symlink usr/lib /lib",
            "--ro-bind /sbin /sbin",
            "--size 16777216 --tmpfs /tmp --remount-ro / --chdir /tmp",
            "-- /usr/bin/python3 -I -c print(1)",
        ] {
            assert!(joined.contains(option), "{option}: {joined}");
        }
        // Nothing of the host but the system directories and a few /etc files.
        for host in ["/root", "/home", "/work", "/etc/passwd", "--bind "] {
            assert!(!joined.contains(host), "{host}: {joined}");
        }
        assert_eq!(argv.last().unwrap(), "print(1)");
    }

    #[test]
    fn without_root_the_limit_counts_the_uids_processes() {
        let config = RunCodeConfig::default();
        let mut shell = plan(&config, &[], HostUser::Own { existing: 100 });
        shell.language = Language::Shell;
        shell.code = "echo hi";
        let argv = strings(&argv(&shell));
        assert!(argv.contains(&"--nproc=132".to_owned()));
        assert!(!argv.iter().any(|a| a.contains("setpriv")));
        assert_eq!(&argv[argv.len() - 3..], ["/bin/sh", "-c", "echo hi"]);
    }
}
