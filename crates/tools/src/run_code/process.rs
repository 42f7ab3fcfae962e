//! Running a sandbox's command line: feed stdin, read stdout and stderr up to a cap each,
//! and kill the sandbox when the wall time passes or the output goes past the cap. Killing
//! the `bwrap` process is enough: the sandbox's init gets SIGKILL with it
//! (`--die-with-parent`), and the kernel kills every process of a pid namespace whose init
//! dies.

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long a killed sandbox may take to be reaped before we stop waiting for it.
const REAP_GRACE: Duration = Duration::from_secs(5);
/// Bytes read at a time.
const READ_CHUNK: usize = 8 * 1024;

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The program (the sandbox) exited by itself.
    Exited,
    /// The wall time passed: killed.
    WallTime,
    /// stdout or stderr went past the cap: killed.
    Output,
}

/// What one run did.
#[derive(Debug)]
pub struct Outcome {
    /// The sandbox's exit status (`None` when it could not be reaped after a kill).
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output was cut at the cap.
    pub truncated: bool,
    pub ending: Ending,
    pub duration: Duration,
}

/// Runs `argv` with no environment, `stdin` fed to it, at most `cap` bytes kept of each
/// output stream, killed after `wall`. An error is a failure to start it.
pub async fn run(
    argv: &[OsString],
    stdin: &[u8],
    cap: usize,
    wall: Duration,
) -> std::io::Result<Outcome> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::other("empty command line"));
    };
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        // Not even the sandbox's launchers see the tools process's environment.
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let (Some(mut input), Some(mut out_pipe), Some(mut err_pipe)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("the sandbox's pipes are missing"));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let overflow = CancellationToken::new();
    let feed = async {
        // A program that exits without reading its input closes the pipe: not an error.
        let _ = input.write_all(stdin).await;
        drop(input);
    };
    let ended = tokio::time::timeout(wall, async {
        tokio::join!(
            feed,
            read_capped(&mut out_pipe, &mut stdout, cap, &overflow),
            read_capped(&mut err_pipe, &mut stderr, cap, &overflow),
        );
        if overflow.is_cancelled() {
            None
        } else {
            Some(child.wait().await)
        }
    })
    .await;
    let (status, ending) = match ended {
        Ok(Some(status)) => (Some(status?), Ending::Exited),
        Ok(None) => (kill(&mut child).await, Ending::Output),
        Err(_elapsed) => (kill(&mut child).await, Ending::WallTime),
    };
    let truncated = stdout.len() > cap || stderr.len() > cap;
    stdout.truncate(cap);
    stderr.truncate(cap);
    Ok(Outcome {
        status,
        stdout,
        stderr,
        truncated,
        ending,
        duration: started.elapsed(),
    })
}

/// Kills the sandbox and reaps it.
async fn kill(child: &mut tokio::process::Child) -> Option<ExitStatus> {
    // An error means it has exited already; the wait below reaps it either way.
    let _ = child.start_kill();
    tokio::time::timeout(REAP_GRACE, child.wait())
        .await
        .ok()
        .and_then(Result::ok)
}

/// Reads `pipe` into `buf` until EOF, or until `buf` holds more than `cap` bytes (then
/// cancels `overflow`), or until `overflow` is cancelled by the other stream.
async fn read_capped(
    pipe: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    cap: usize,
    overflow: &CancellationToken,
) {
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        let read = tokio::select! {
            () = overflow.cancelled() => return,
            read = pipe.read(&mut chunk) => read,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = (cap + 1).saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
                if buf.len() > cap {
                    overflow.cancel();
                    return;
                }
            }
        }
    }
}
