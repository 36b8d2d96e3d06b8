//! A named network namespace that exists as long as its guard, and ways to
//! run things inside it: `ip` commands, sysctls, and closures on threads.

use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sched::{setns, CloneFlags};

/// A network namespace created with `ip netns add` and deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` (see [`super::unique_tag`] for a name no
    /// one else uses). Fails if it already exists.
    pub fn create(name: impl Into<String>) -> Result<NetNs> {
        let name = name.into();
        run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        Ok(NetNs { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that keeps the namespace alive; opening it gives a
    /// handle for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> <args>`, returning its stdout.
    pub fn ip<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `ip netns exec <ns> <cmd...>`, returning its stdout. For
    /// short-lived tools only: `ip netns exec` replaces /sys, which hides the
    /// host's bpffs (see [`NetNs::command`] for long-running processes).
    pub fn exec<S: AsRef<OsStr>>(&self, cmd: impl IntoIterator<Item = S>) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd))
    }

    /// Writes a sysctl of this namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    /// `/proc/sys/net` shows the namespace of the thread that opens it, so
    /// the write happens from a thread inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value))?
            .with_context(|| format!("setting {key} in {}", self.name))
    }

    /// Starts `f` on a new OS thread that first moves into this namespace.
    /// Sockets `f` creates belong to the namespace for their whole life, even
    /// when later used from other threads. Returns once the thread is inside.
    pub fn enter_thread<F, T>(&self, f: F) -> Result<NsThread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let handle = thread::Builder::new()
            .name(format!("in {}", self.name))
            .spawn(move || {
                // Only this thread moves: namespaces are per thread.
                let entered = setns(&ns, CloneFlags::CLONE_NEWNET);
                drop(ns);
                let ok = entered.is_ok();
                // The receiver waits for this message, so the send cannot fail.
                let _ = entered_tx.send(entered);
                ok.then(f)
            })
            .context("spawning a thread")?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(NsThread { handle }),
            Ok(Err(errno)) => Err(anyhow!(errno))
                .with_context(|| format!("entering network namespace {}", self.name)),
            Err(_) => bail!("thread entering {} died before reporting", self.name),
        }
    }

    /// Runs `f` inside this namespace and waits for its result.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Ok(self.enter_thread(f)?.join())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also destroys its veths and their peers.
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "warning: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// A thread started by [`NetNs::enter_thread`].
pub struct NsThread<T> {
    // `None` only when setns failed, and then no NsThread is handed out.
    handle: JoinHandle<Option<T>>,
}

impl<T> NsThread<T> {
    /// Waits for the closure's result; a panic in it is re-raised here.
    pub fn join(self) -> T {
        match self.handle.join() {
            Ok(result) => result.expect("an NsThread always entered its namespace"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Runs a command to completion; its stdout on success, else an error
/// carrying the command line and its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
