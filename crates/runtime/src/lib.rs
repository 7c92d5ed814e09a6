//! Slipway's container runtime: runs one OCI runtime bundle as a container.
//!
//! The init (onboot and onshutdown containers) and the engine (services) both start containers
//! through this crate, so it stays a small library with no policy: it knows bundles, stdio and
//! processes, not boot order or restart rules. The isolation itself (namespaces, capabilities,
//! read-only root, mounts and binds, devices, rlimits, sysctls, cgroup v1 and v2 limits)
//! is done by youki's `libcontainer`; this crate adds what Slipway bundles need around it:
//!
//! - the LinuxKit layout for writable containers: when a bundle holds `lower/`, a tmpfs upper
//!   directory and an overlay are mounted on `rootfs/` before the container starts, and removed by
//!   [`Container::delete`];
//! - stdout and stderr given as open files or pipes (log files, the init's console tee);
//! - waiting for the container's process, which `libcontainer` makes a child of the caller
//!   (`CLONE_PARENT`), with the exit status decoded ([`ExitStatus`]);
//! - an init program (the engine's reaping shim) run as a container's first process, in front of
//!   its command, without a file in the container ([`Runtime::with_init`]).

/// The tracing target of libcontainer's container-init warnings. Built without seccomp (see
/// Cargo.toml), it warns at every container start that seccomp is not there to enforce
/// `noNewPrivileges` (which the kernel's prctl does anyway): loggers raise this target to errors.
pub mod dev_bind;

pub const NO_SECCOMP_WARNINGS: &str = "libcontainer::process::init::process";

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::container::Container as LcContainer;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use rustix::mount::{MountFlags, UnmountFlags, mount, unmount};

/// What can go wrong while running a container. Each variant names the container and the path
/// involved, so the init can print it on the console as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {id}: bundle {bundle} has no config.json")]
    NoConfig { id: String, bundle: PathBuf },
    #[error("container {id}: state directory {path}: {source}")]
    StateDir {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("container {id}: mounting the writable overlay on {rootfs}: {source}")]
    Overlay {
        id: String,
        rootfs: PathBuf,
        source: io::Error,
    },
    #[error("container {id} (bundle {bundle}): creating: {source}")]
    Create {
        id: String,
        bundle: PathBuf,
        source: Box<LibcontainerError>,
    },
    #[error("container {id}: starting: {source}")]
    Start {
        id: String,
        source: Box<LibcontainerError>,
    },
    #[error("container {id}: the runtime recorded no process id")]
    NoPid { id: String },
    #[error("container {id}: waiting for process {pid}: {source}")]
    Wait {
        id: String,
        pid: i32,
        source: nix::Error,
    },
    #[error("container {id}: sending {signal} : {source}")]
    Kill {
        id: String,
        signal: Signal,
        source: Box<LibcontainerError>,
    },
    #[error("container {id}: deleting: {source}")]
    Delete {
        id: String,
        source: Box<LibcontainerError>,
    },
    #[error("container {id}: unmounting {path}: {source}")]
    Unmount {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("init program {path}: {source}")]
    Init { path: PathBuf, source: io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a container's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called exit(code).
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl ExitStatus {
    /// Decodes a `waitpid` result; `None` for statuses that are not an end (stopped, continued).
    /// Public because the init reaps every child itself with `waitpid(-1)` and hands the
    /// container's status over.
    pub fn from_wait_status(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(Self::Exited(code)),
            WaitStatus::Signaled(_, signal, _) => Some(Self::Signaled(signal)),
            _ => None,
        }
    }

    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }

    /// The shell's convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(signal) => 128 + signal as i32,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exit status {code}"),
            Self::Signaled(signal) => write!(f, "killed by {signal}"),
        }
    }
}

/// Where the container's standard streams go. `None` inherits the caller's (the console, in
/// the init).
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Runs containers, keeping their runtime state under one directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    state_dir: PathBuf,
    no_pivot: bool,
    init: Option<Arc<InitProgram>>,
}

/// The program containers can run under as their first process, held open: a container
/// executes it from this descriptor (`execveat`), so nothing is created in or mounted into its
/// root, which may be read-only, shared with other containers, or a squashfs.
#[derive(Debug)]
struct InitProgram {
    /// O_PATH, close-on-exec: inherited by a container's process up to its exec, by no command.
    fd: OwnedFd,
    /// Its argv[0], which selects the shim in a multi-call binary.
    name: CString,
}

/// True when `/` is a tmpfs or ramfs, as in a Slipway image booted from its initrd. There
/// pivot_root(2) fails with EINVAL, so containers are entered by moving their root onto `/` and
/// chroot-ing instead, the way runc's `--no-pivot` (Docker's `DOCKER_RAMDISK`) does for
/// ramdisk roots; the runtime still unmounts the host's /proc and /sys from the container's
/// view before the move.
#[allow(clippy::unnecessary_cast)] // f_type's integer type differs between architectures
fn root_is_ramdisk() -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    rustix::fs::statfs("/").is_ok_and(|s| matches!(s.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC))
}

impl Runtime {
    /// `state_dir` holds one directory per running container (libcontainer's state) and the
    /// tmpfs mounts of writable overlays. It is created if missing; in an image it is on /run.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self> {
        let state_dir = state_dir.into();
        fs::create_dir_all(state_dir.join("overlay")).map_err(|source| Error::StateDir {
            id: String::new(),
            path: state_dir.clone(),
            source,
        })?;
        // libcontainer wants an absolute, existing root path.
        let state_dir = fs::canonicalize(&state_dir).map_err(|source| Error::StateDir {
            id: String::new(),
            path: state_dir.clone(),
            source,
        })?;
        Ok(Self {
            state_dir,
            no_pivot: root_is_ramdisk(),
            init: None,
        })
    }

    /// Lets containers run under `program` (started as `name COMMAND [ARG]...`, their command
    /// as its arguments): see [`Runtime::create_and_start_with`]. The program is opened now,
    /// through a private read-only bind mount when the caller may mount: a container's
    /// processes can open their PID 1's executable as `/proc/1/exe`, and that must not be a
    /// way to write to the host's file (runc's CVE-2019-5736).
    pub fn with_init(mut self, program: &Path, name: &str) -> Result<Self> {
        let err = |source: io::Error| Error::Init {
            path: program.to_owned(),
            source,
        };
        let name = CString::new(name).map_err(|e| err(io::Error::other(e)))?;
        // A mount point of this process's own: the engine's helper processes open the program
        // at the same time.
        let point = self.state_dir.join(format!("init.{}", std::process::id()));
        let fd = match open_read_only(&point, program) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(
                    "init program {}: no read-only bind mount ({e}); opening it in place",
                    program.display()
                );
                open_path(program).map_err(err)?
            }
        };
        self.init = Some(Arc::new(InitProgram { fd, name }));
        Ok(self)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Creates the container `id` from the bundle and starts its process. The process is a
    /// child of the calling process: reap it with [`Container::wait`] (or hand the status of
    /// a `waitpid(-1)` to the caller's own bookkeeping, as the init does).
    pub fn create_and_start(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<Container> {
        self.create_and_start_with(id, bundle, stdio, false)
    }

    /// [`Runtime::create_and_start`], with the container's command run under the init program
    /// when `init` is set and the runtime has one ([`Runtime::with_init`]). The command is
    /// checked as usual (found, executable) before the init is started in front of it; if the
    /// init cannot be executed (a seccomp profile without `execveat`), the command runs
    /// directly, and says so on its stderr.
    pub fn create_and_start_with(
        &self,
        id: &str,
        bundle: &Path,
        stdio: Stdio,
        init: bool,
    ) -> Result<Container> {
        let init = self.init.clone().filter(|_| init);
        if !bundle.join("config.json").is_file() {
            return Err(Error::NoConfig {
                id: id.to_owned(),
                bundle: bundle.to_owned(),
            });
        }
        let overlay = self.mount_overlay_if_layered(id, bundle)?;
        let under_init = init.is_some();
        match self.create_and_start_mounted(id, bundle, stdio, init) {
            Ok(inner) => Ok(Container {
                id: id.to_owned(),
                inner,
                overlay,
                exit: None,
                under_init,
                child: true,
            }),
            Err(err) => {
                // Leave nothing mounted behind a container that never ran; the original error
                // is the one worth reporting.
                if let Some(overlay) = &overlay {
                    let _ = overlay.unmount(id);
                }
                let _ = fs::remove_dir_all(self.state_dir.join(id));
                Err(err)
            }
        }
    }

    fn create_and_start_mounted(
        &self,
        id: &str,
        bundle: &Path,
        stdio: Stdio,
        init: Option<Arc<InitProgram>>,
    ) -> Result<LcContainer> {
        let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_executor(Workload { init })
            .with_root_path(&self.state_dir)
            .and_then(ContainerBuilder::validate_id)
            .map_err(|source| Error::Create {
                id: id.to_owned(),
                bundle: bundle.to_owned(),
                source: Box::new(source),
            })?;
        if let Some(fd) = stdio.stdin {
            builder = builder.with_stdin(fd);
        }
        if let Some(fd) = stdio.stdout {
            builder = builder.with_stdout(fd);
        }
        if let Some(fd) = stdio.stderr {
            builder = builder.with_stderr(fd);
        }
        let mut container = builder
            .as_init(bundle)
            // Neither the images nor the hosts Slipway targets run systemd: cgroups are
            // managed directly through cgroupfs (v2 in images, v1 or hybrid on hosts).
            .with_systemd(false)
            .with_no_pivot(self.no_pivot)
            // Detached: the container's process is not tied to a terminal of ours, and
            // `create` returns once the process waits for `start`.
            .with_detach(true)
            .build()
            .map_err(|source| Error::Create {
                id: id.to_owned(),
                bundle: bundle.to_owned(),
                source: Box::new(source),
            })?;
        if let Err(source) = container.start() {
            let _ = container.delete(true);
            return Err(Error::Start {
                id: id.to_owned(),
                source: Box::new(source),
            });
        }
        Ok(container)
    }

    /// Takes over the container `id` that an earlier process created from `bundle` with this
    /// state directory (a helper process, or an engine that died): its state is read back, so
    /// it can be signalled, waited for and deleted as if created here. `init` says whether it
    /// was started under the init program. `None` when no state of that id exists.
    ///
    /// Whether its process can be reaped here (a child, or an orphan re-parented to this
    /// process as a subreaper) is found out now; when it cannot, [`Container::try_wait`]
    /// never reports an end, and the caller watches the process by other means (a pidfd).
    pub fn load(&self, id: &str, bundle: &Path, init: bool) -> Result<Option<Container>> {
        let root = self.state_dir.join(id);
        if !root.join("state.json").exists() {
            return Ok(None);
        }
        let inner = LcContainer::load(root).map_err(|source| Error::Create {
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            source: Box::new(source),
        })?;
        let child = inner.pid().is_some_and(|pid| {
            use nix::sys::wait::{Id, waitid};
            // WNOWAIT: only asks; the status stays for `try_wait`. ECHILD: not ours to reap.
            waitid(
                Id::Pid(pid),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            )
            .is_ok()
        });
        let overlay = bundle.join("lower").is_dir().then(|| Overlay {
            tmp: self.state_dir.join("overlay").join(id),
            rootfs: bundle.join("rootfs"),
        });
        Ok(Some(Container {
            id: id.to_owned(),
            inner,
            overlay,
            exit: None,
            under_init: init && self.init.is_some(),
            child,
        }))
    }

    /// Removes whatever a container `id` that never finished starting left behind (its helper
    /// was killed half-way): its processes, cgroup and state when libcontainer wrote any, and
    /// its writable overlay. Best effort: each step runs whatever the previous ones did.
    pub fn clean_up(&self, id: &str, bundle: &Path) {
        match self.load(id, bundle, false) {
            Ok(Some(container)) => {
                if let Err(e) = container.delete() {
                    tracing::warn!("{e}");
                }
            }
            Ok(None) | Err(_) => {
                let overlay = Overlay {
                    tmp: self.state_dir.join("overlay").join(id),
                    rootfs: bundle.join("rootfs"),
                };
                if overlay.tmp.exists() {
                    let _ = overlay.unmount(id);
                }
            }
        }
        let _ = fs::remove_dir_all(self.state_dir.join(id));
    }

    /// LinuxKit's layout for containers whose root is writable: the image is in `lower/`, and
    /// `rootfs/` is an empty mount point. A tmpfs (in the state directory, because the image's
    /// own root is read-only) holds the upper and work directories of an overlay on `rootfs/`.
    fn mount_overlay_if_layered(&self, id: &str, bundle: &Path) -> Result<Option<Overlay>> {
        let lower = bundle.join("lower");
        if !lower.is_dir() {
            return Ok(None);
        }
        let rootfs = bundle.join("rootfs");
        let err = |source: io::Error| Error::Overlay {
            id: id.to_owned(),
            rootfs: rootfs.clone(),
            source,
        };
        let tmp = self.state_dir.join("overlay").join(id);
        fs::create_dir_all(&tmp).map_err(err)?;
        mount("tmpfs", &tmp, "tmpfs", MountFlags::empty(), c"mode=0755")
            .map_err(|e| err(e.into()))?;
        let mounted = || -> io::Result<()> {
            fs::create_dir(tmp.join("upper"))?;
            fs::create_dir(tmp.join("work"))?;
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                tmp.join("upper").display(),
                tmp.join("work").display()
            );
            let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
            mount(
                "overlay",
                &rootfs,
                "overlay",
                MountFlags::empty(),
                data.as_c_str(),
            )?;
            Ok(())
        };
        if let Err(e) = mounted() {
            let _ = unmount(&tmp, UnmountFlags::DETACH);
            let _ = fs::remove_dir(&tmp);
            return Err(err(e));
        }
        Ok(Some(Overlay { tmp, rootfs }))
    }
}

/// Opens `program` through a read-only bind mount on `point`, then detaches the mount: the
/// descriptor keeps it alive, and nothing is left to see or clean up.
fn open_read_only(point: &Path, program: &Path) -> io::Result<OwnedFd> {
    // A mount point left by an earlier run of the same state directory.
    let _ = unmount(point, UnmountFlags::DETACH);
    fs::write(point, b"")?;
    let opened = rustix::mount::mount_bind(program, point)
        .and_then(|()| {
            rustix::mount::mount_remount(point, MountFlags::BIND | MountFlags::RDONLY, c"")
        })
        .map_err(io::Error::from)
        .and_then(|()| open_path(point));
    let _ = unmount(point, UnmountFlags::DETACH);
    let _ = fs::remove_file(point);
    opened
}

fn open_path(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// libcontainer's default executor (execvp of `process.args`), run with an empty signal mask,
/// or the init program with the command as its arguments. The mask is inherited across clone
/// and exec, and PID 1 blocks every signal it reads from its signalfd; a container must not
/// start with SIGTERM blocked.
///
/// The init is started with every signal blocked instead, from before the container reports
/// itself created: a signal sent to a PID 1 that neither handles nor blocks it is dropped, so a
/// stop that came before the init had blocked SIGTERM would be lost. Blocked, it waits for the
/// init's signalfd.
#[derive(Clone)]
struct Workload {
    init: Option<Arc<InitProgram>>,
}

fn set_signal_mask(mask: &nix::sys::signal::SigSet) -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(mask), None)
}

impl Executor for Workload {
    fn setup_envs(
        &self,
        envs: std::collections::HashMap<String, String>,
    ) -> Result<(), libcontainer::workload::ExecutorSetEnvsError> {
        if self.init.is_some() {
            set_signal_mask(&nix::sys::signal::SigSet::all()).map_err(|e| {
                libcontainer::workload::ExecutorSetEnvsError::Other(format!(
                    "blocking signals for the init: {e}"
                ))
            })?;
        }
        libcontainer::workload::default::get_executor().setup_envs(envs)
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(init) = &self.init {
            let args = spec
                .process()
                .as_ref()
                .and_then(|p| p.args().as_ref())
                .ok_or(ExecutorError::InvalidArg)?;
            let argv = std::iter::once(Ok(init.name.clone()))
                .chain(args.iter().map(|a| CString::new(a.as_bytes())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ExecutorError::InvalidArg)?;
            // The environment libcontainer set up for the command (`setup_envs` ran).
            let env: Vec<CString> = std::env::vars_os()
                .filter_map(|(key, value)| {
                    let mut pair: OsString = key;
                    pair.push("=");
                    pair.push(value);
                    CString::new(pair.into_vec()).ok()
                })
                .collect();
            let Err(error) = nix::unistd::execveat(
                Some(init.fd.as_raw_fd()),
                c"",
                &argv,
                &env,
                nix::fcntl::AtFlags::AT_EMPTY_PATH,
            );
            // Its stderr is the container's log.
            use std::io::Write;
            let _ = writeln!(
                io::stderr(),
                "slipway: cannot execute the container's init ({error}); running the command directly"
            );
        }
        set_signal_mask(&nix::sys::signal::SigSet::empty())
            .map_err(|e| ExecutorError::Other(format!("clearing the signal mask: {e}")))?;
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }
}

#[derive(Debug)]
struct Overlay {
    tmp: PathBuf,
    rootfs: PathBuf,
}

impl Overlay {
    fn unmount(&self, id: &str) -> Result<()> {
        for path in [&self.rootfs, &self.tmp] {
            unmount(path, UnmountFlags::DETACH).map_err(|e| Error::Unmount {
                id: id.to_owned(),
                path: path.clone(),
                source: e.into(),
            })?;
        }
        let _ = fs::remove_dir(&self.tmp);
        Ok(())
    }
}

/// A started container.
#[derive(Debug)]
pub struct Container {
    id: String,
    inner: LcContainer,
    overlay: Option<Overlay>,
    exit: Option<ExitStatus>,
    under_init: bool,
    /// Whether its main process is a child of this process (or re-parented to it), which
    /// `waitpid` can reap; not so for one taken over from an engine that died.
    child: bool,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the container was started under the runtime's init program, which passes the
    /// signals it gets on to the command (unless it could not be executed, see
    /// [`Runtime::create_and_start_with`]).
    pub fn under_init(&self) -> bool {
        self.under_init
    }

    /// Whether its main process still runs (as libcontainer's state and `/proc` tell).
    pub fn is_running(&self) -> bool {
        self.inner.status() == libcontainer::container::ContainerStatus::Running
    }

    /// When the container was created, as its state records it.
    pub fn created(&self) -> Option<std::time::SystemTime> {
        self.inner.created().map(Into::into)
    }

    /// Whether this process can reap the container's main process (see [`Runtime::load`]).
    pub fn is_child(&self) -> bool {
        self.child
    }

    /// The container's main process, as seen from the caller's pid namespace.
    pub fn pid(&self) -> Result<i32> {
        self.inner
            .pid()
            .map(Pid::as_raw)
            .ok_or_else(|| Error::NoPid {
                id: self.id.clone(),
            })
    }

    /// Blocks until the main process ends and returns how it ended. Calling it again returns
    /// the same status.
    /// Not for a container that is not a child ([`Container::is_child`]): that returns an
    /// error at once.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if !self.child {
            return Err(Error::Wait {
                id: self.id.clone(),
                pid: self.pid()?,
                source: nix::Error::ECHILD,
            });
        }
        self.wait_with(WaitPidFlag::empty())
            .map(|status| status.expect("a blocking waitpid returns an end status"))
    }

    /// Returns the exit status if the main process has ended, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.wait_with(WaitPidFlag::WNOHANG)
    }

    fn wait_with(&mut self, flags: WaitPidFlag) -> Result<Option<ExitStatus>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        if !self.child {
            return Ok(None);
        }
        let pid = self.pid()?;
        loop {
            match waitpid(Pid::from_raw(pid), Some(flags)) {
                Ok(status) => {
                    if let Some(exit) = ExitStatus::from_wait_status(status) {
                        self.exit = Some(exit);
                        return Ok(Some(exit));
                    }
                    if flags.contains(WaitPidFlag::WNOHANG) {
                        return Ok(None);
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(source) => {
                    return Err(Error::Wait {
                        id: self.id.clone(),
                        pid,
                        source,
                    });
                }
            }
        }
    }

    /// Records an exit status reaped elsewhere (a PID 1 that reaps with `waitpid(-1)` gets
    /// the status before the container's owner asks for it).
    pub fn set_exited(&mut self, status: ExitStatus) {
        self.exit = Some(status);
    }

    /// The status recorded by [`Container::wait`], [`Container::try_wait`] or
    /// [`Container::set_exited`].
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Sends `signal` to the container's main process, or to every process of its cgroup
    /// when `all` is set.
    pub fn kill(&mut self, signal: Signal, all: bool) -> Result<()> {
        self.inner.kill(signal, all).map_err(|source| Error::Kill {
            id: self.id.clone(),
            signal,
            source: Box::new(source),
        })
    }

    /// Removes the container: kills what still runs in it, removes its cgroup and state, and
    /// unmounts its writable overlay. Reap it first ([`Container::wait`]) to keep its status.
    pub fn delete(mut self) -> Result<()> {
        self.inner.delete(true).map_err(|source| Error::Delete {
            id: self.id.clone(),
            source: Box::new(source),
        })?;
        // Processes killed by delete are children of ours; reap the main one so it does not
        // stay a zombie. ECHILD (already reaped) is fine.
        if self.exit.is_none() && self.child {
            let _ = self.wait();
        }
        if let Some(overlay) = self.overlay.take() {
            overlay.unmount(&self.id)?;
        }
        Ok(())
    }
}
