//! Runs `lb-agent` in a topology's node namespace, with its own pin directory
//! and its log captured to a file. For crash tests the agent can be killed
//! with SIGKILL and started again on the same pin directory, as a DaemonSet
//! would restart it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cgroup::TestCgroup;
use super::netns::NetNs;
use super::scratch::ScratchDir;

/// How long the agent gets to detach and unpin after SIGTERM.
const GRACE: Duration = Duration::from_secs(3);

/// A running agent. Dropping it stops it (SIGTERM, then SIGKILL after 3 s)
/// and removes its pin directory; during a panic it first prints the log.
pub struct AgentProcess {
    child: Child,
    exit: Option<ExitStatus>,
    /// What started it, kept for [`AgentProcess::restart`].
    binary: PathBuf,
    args: Vec<OsString>,
    node_name: String,
    pin_dir: PathBuf,
    /// Given as `--cgroup`: the node processes of the test join it.
    /// Dropped after the agent has stopped (see Drop).
    cgroup: Option<TestCgroup>,
    log_path: PathBuf,
    // Holds the log; dropped after the agent has stopped (Drop runs first).
    _scratch: ScratchDir,
}

impl AgentProcess {
    /// Starts `<binary> --manifests <manifests> --pod-interfaces <glob>
    /// --bpffs /sys/fs/bpf/<unique> --unpin-on-exit <extra_args...>` inside
    /// `node`.
    pub fn start(
        binary: &Path,
        node: &NetNs,
        manifests: &Path,
        pod_interfaces: &str,
        extra_args: &[&str],
    ) -> Result<AgentProcess> {
        let source = [OsStr::new("--manifests"), manifests.as_os_str()];
        Self::start_with_source(binary, node, &source, pod_interfaces, extra_args)
    }

    /// Same, with the agent's source of Services given as arguments (e.g.
    /// `--kubeconfig FILE` for an API server).
    pub fn start_with_source(
        binary: &Path,
        node: &NetNs,
        source: &[&OsStr],
        pod_interfaces: &str,
        extra_args: &[&str],
    ) -> Result<AgentProcess> {
        Self::spawn_new(binary, node, source, pod_interfaces, extra_args, true, &[])
    }

    /// Like [`Self::start`], with the agent run by `launcher` (a program
    /// and its arguments, ending with what precedes the command it runs,
    /// e.g. `setpriv ... --`): to start it with fewer privileges.
    pub fn start_launched(
        launcher: &[&str],
        binary: &Path,
        node: &NetNs,
        manifests: &Path,
        pod_interfaces: &str,
        extra_args: &[&str],
    ) -> Result<AgentProcess> {
        let source = [OsStr::new("--manifests"), manifests.as_os_str()];
        Self::spawn_new(
            binary,
            node,
            &source,
            pod_interfaces,
            extra_args,
            true,
            launcher,
        )
    }

    /// Like [`Self::start`] but without `--unpin-on-exit`: as in production,
    /// the datapath stays attached when the agent exits (the pin directory
    /// is still removed when this handle is dropped).
    pub fn start_keeping_pins(
        binary: &Path,
        node: &NetNs,
        manifests: &Path,
        pod_interfaces: &str,
    ) -> Result<AgentProcess> {
        let source = [OsStr::new("--manifests"), manifests.as_os_str()];
        Self::spawn_new(binary, node, &source, pod_interfaces, &[], false, &[])
    }

    fn spawn_new(
        binary: &Path,
        node: &NetNs,
        source: &[&OsStr],
        pod_interfaces: &str,
        extra_args: &[&str],
        unpin_on_exit: bool,
        launcher: &[&str],
    ) -> Result<AgentProcess> {
        let scratch = ScratchDir::new()?;
        let log_path = scratch.path().join("agent.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let pin_dir = Path::new("/sys/fs/bpf").join(super::unique_tag());
        let cgroup = TestCgroup::create()?;
        let mut args: Vec<OsString> = source.iter().map(|&a| a.to_owned()).collect();
        args.extend(["--pod-interfaces".into(), pod_interfaces.into()]);
        args.extend(["--bpffs".into(), pin_dir.clone().into_os_string()]);
        // Never the host's root cgroup: only this test's node processes.
        args.extend(["--cgroup".into(), cgroup.path().into()]);
        if unpin_on_exit {
            args.push("--unpin-on-exit".into());
        }
        args.extend(extra_args.iter().map(OsString::from));
        // Launched: the launcher is the program, the agent its argument.
        let (binary, args) = match launcher.split_first() {
            None => (binary.to_owned(), args),
            Some((program, launcher_args)) => {
                let mut all: Vec<OsString> = launcher_args.iter().map(OsString::from).collect();
                all.push(binary.into());
                all.extend(args);
                (PathBuf::from(program), all)
            }
        };
        let child = spawn(&binary, node, &args, log)?;
        Ok(AgentProcess {
            child,
            exit: None,
            binary,
            args,
            node_name: node.name().to_owned(),
            pin_dir,
            cgroup: Some(cgroup),
            log_path,
            _scratch: scratch,
        })
    }

    /// The agent's process id (of the current process, after a restart).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the agent pins its maps and links.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// A `Command` for `program` as a process of the agent's node: in
    /// `node`'s network namespace and the cgroup the agent balances
    /// sockets of (a hostNetwork pod, a node daemon).
    pub fn node_process(&self, node: &NetNs, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut cmd = node.command(program)?;
        if let Some(cgroup) = &self.cgroup {
            cgroup.enter_on_spawn(&mut cmd);
        }
        Ok(cmd)
    }

    /// Everything the agent printed so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The agent's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Polls `probe` (e.g. "a request to the VIP succeeds") until it holds,
    /// and returns how long that took. Fails when `timeout` passes first or
    /// when the agent exits: no point waiting for a dead agent.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let done = super::wait_until(start + timeout, || self.exited().is_some() || probe());
        if let Some(status) = self.exited() {
            bail!("the agent exited ({status}) instead of becoming ready");
        }
        if !done {
            bail!("the agent was not ready after {timeout:?}");
        }
        Ok(start.elapsed())
    }

    /// Kills the agent with SIGKILL, as the OOM killer or a node problem
    /// would: it gets no chance to detach or unpin anything. Returns once it
    /// is gone. The pin directory stays, for [`Self::restart`] (or drop) to
    /// deal with.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            bail!("the agent had already exited ({status}) before kill -9");
        }
        // Child::kill sends SIGKILL; the child is not reaped yet, so the pid
        // is still ours.
        self.child.kill().context("sending SIGKILL to the agent")?;
        let status = self.child.wait().context("waiting for the killed agent")?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Starts the agent again after it exited (see [`Self::kill9`]): the same
    /// binary and arguments, hence the same pin directory, which the new
    /// process adopts; its output is appended to the same log after a marker
    /// line. `node` must be the namespace the agent was started in (a
    /// namespace cannot be re-opened by name without owning it).
    pub fn restart(&mut self, node: &NetNs) -> Result<()> {
        if self.exited().is_none() {
            bail!("the agent (pid {}) is still running", self.child.id());
        }
        if node.name() != self.node_name {
            bail!(
                "the agent ran in {}, not in {}",
                self.node_name,
                node.name()
            );
        }
        let mut log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        writeln!(log, "---- lb-agent restarted ----")
            .with_context(|| format!("writing {}", self.log_path.display()))?;
        self.child = spawn(&self.binary, node, &self.args, log)?;
        self.exit = None;
        Ok(())
    }

    /// Stops the agent, gracefully if it lets us, and removes whatever it
    /// left in its pin directory. Returns how it exited.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let status = self.terminate()?;
        if self.pin_dir.exists() {
            fs::remove_dir_all(&self.pin_dir)
                .with_context(|| format!("removing {}", self.pin_dir.display()))?;
        }
        Ok(status)
    }

    /// Sends SIGTERM (SIGKILL after 3 s) and waits; the pin directory is
    /// left as the agent left it.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        // The child is ours and not yet reaped, so the pid cannot be reused.
        kill(pid, Signal::SIGTERM).context("sending SIGTERM to the agent")?;
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: the agent ignored SIGTERM for {GRACE:?}, killing it");
        self.child.kill().context("killing the agent")?;
        let status = self.child.wait().context("waiting for the killed agent")?;
        self.exit = Some(status);
        Ok(status)
    }
}

/// Starts `binary args...` inside `node` with stdout and stderr to `log`.
fn spawn(binary: &Path, node: &NetNs, args: &[OsString], log: File) -> Result<Child> {
    node.command(binary)?
        .args(args)
        // The log is a file, not a terminal: no colour codes in it.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} in {}", binary.display(), node.name()))
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- lb-agent log ({}) ----\n{}---- end of lb-agent log ----",
                self.log_path.display(),
                self.log()
            );
        }
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping the agent: {e:#}");
        }
        // Only now empty of the agent: the cgroup can go.
        drop(self.cgroup.take());
    }
}
