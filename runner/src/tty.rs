//! The pseudo-terminal of `strata run -t`: the pty pair, the slave as the container process's
//! controlling terminal, raw mode and window size of the supervisor's own terminal, and the relay
//! between the supervisor's stdio and the master.
//!
//! It owns only the fds it opens or is handed. It must not install signal handlers (the caller's
//! signal loop calls [`copy_window_size`] on SIGWINCH), must not change the file status flags of
//! the caller's stdio (a dup shares them with the user's shell, which would be left non-blocking),
//! and knows nothing of namespaces, mounts or how the container is started.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

const PTMX: &str = "/dev/ptmx";

/// How long [`Relay::finish`] keeps waiting on a master that neither has data nor reports EIO.
/// Once the container is gone its last output is readable at once, so silence that long means a
/// slave fd is still open elsewhere (leaked to a stray process, or not dropped by the caller), and
/// waiting for its EIO would hang.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

const BUF_SIZE: usize = 16 * 1024;

/// A pty pair. Both fds are close-on-exec.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a new pty pair (both O_CLOEXEC; the child re-dups the slave onto 0-2), with the window
/// size of `size_from` if that fd is a terminal.
pub fn open(size_from: Option<BorrowedFd<'_>>) -> Result<Pty> {
    // SAFETY: a valid C string; the result is checked before use.
    let fd = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io(PTMX, io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })
        .map_err(|e| Error::sys("unlocking a new pty", e))?;
    let slave = open_slave(&master)?;
    if let Some(from) = size_from {
        copy_window_size(from, master.as_fd());
    }
    Ok(Pty { master, slave })
}

fn open_slave(master: &OwnedFd) -> Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // TIOCGPTPEER opens the peer of this very master; a path could name another devpts instance,
    // or be swapped under us. It needs Linux 4.13, hence the fallback.
    // SAFETY: TIOCGPTPEER takes the open flags by value; the result is checked.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd >= 0 {
        // SAFETY: a fresh fd that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let path = pts_path_by_number(master)?;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::invalid("pty path with a NUL"))?;
    // SAFETY: a valid C string; the result is checked before use.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::io(path, io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pts_path_by_number(master: &OwnedFd) -> Result<PathBuf> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })
        .map_err(|e| Error::sys("reading the number of a pty", e))?;
    Ok(PathBuf::from(format!("/dev/pts/{n}")))
}

/// The slave's path (/dev/pts/N), e.g. to bind-mount it as the container's /dev/console.
pub fn slave_path(pty: &Pty) -> Result<PathBuf> {
    // The link names the slave in our mount namespace whichever devpts instance it belongs to;
    // the number alone assumes that instance is the one on /dev/pts.
    match std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())) {
        Ok(path) if path.is_absolute() => Ok(path),
        _ => pts_path_by_number(&pty.master),
    }
}

/// In the container's process before exec: new session, the slave as controlling terminal
/// (TIOCSCTTY) and as fds 0, 1, 2. Async-signal-safe enough to run after fork (no allocation).
/// The slave fd itself is left as it is (it is close-on-exec).
pub fn attach_as_controlling(slave: RawFd) -> io::Result<()> {
    // SAFETY: plain system calls on integers, safe after fork.
    unsafe {
        cvt(libc::setsid())?;
        cvt(libc::ioctl(slave, libc::TIOCSCTTY, 0))?;
        for target in 0..=2 {
            if slave == target {
                // dup2 onto itself would keep the close-on-exec flag.
                let flags = cvt(libc::fcntl(slave, libc::F_GETFD))?;
                cvt(libc::fcntl(slave, libc::F_SETFD, flags & !libc::FD_CLOEXEC))?;
            } else {
                cvt(libc::dup2(slave, target))?;
            }
        }
    }
    Ok(())
}

/// Raw mode of a terminal; restores the settings it replaced when dropped.
pub struct RawMode {
    // Our own dup, so the guard outlives the caller's borrow; it shares the terminal, so
    // restoring through it restores the caller's.
    fd: OwnedFd,
    saved: libc::termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSANOW rather than TCSADRAIN: draining can wait forever on a stuck terminal, and the
        // output already queued was processed when it was written.
        let _ = tcsetattr(self.fd.as_fd(), &self.saved);
    }
}

/// Puts the terminal on `fd` in raw mode if it is one; the guard restores the previous settings
/// on drop.
pub fn raw_mode_if_tty(fd: BorrowedFd<'_>) -> Result<Option<RawMode>> {
    let saved = match tcgetattr(fd) {
        Ok(saved) => saved,
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => return Ok(None),
        Err(e) => return Err(Error::sys("reading the settings of the terminal", e)),
    };
    let fd = fd.try_clone_to_owned().map_err(|e| Error::sys("duplicating the terminal fd", e))?;
    let mut raw = saved;
    // SAFETY: modifies a termios we own.
    unsafe { libc::cfmakeraw(&mut raw) };
    tcsetattr(fd.as_fd(), &raw).map_err(|e| Error::sys("putting the terminal in raw mode", e))?;
    Ok(Some(RawMode { fd, saved }))
}

/// Copies the window size of terminal `from` to terminal `to` (no-op if `from` is not a terminal).
pub fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    // SAFETY: winsize is plain integers.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    if unsafe { libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } < 0 {
        return;
    }
    // A terminal that knows no size (serial lines, some CI runners) reports 0x0, which would
    // make full-screen programs in the container draw nothing.
    if size.ws_row == 0 && size.ws_col == 0 {
        return;
    }
    // SAFETY: TIOCSWINSZ reads one winsize. A failure leaves the old size, which is harmless.
    unsafe { libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &size) };
}

/// The two threads copying between the supervisor's stdio and the master.
pub struct Relay {
    master: Arc<OwnedFd>,
    /// The write end of the wake-up pipe: closing it makes the read end report POLLHUP to both
    /// threads at once, and stays reported, so no wake-up can be missed.
    stop: Option<OwnedFd>,
    input: Option<JoinHandle<()>>,
    output: Option<JoinHandle<()>>,
}

/// Starts relaying: `input` (if any) → master, master → `output`, on background threads.
pub fn start_relay(master: OwnedFd, input: Option<OwnedFd>, output: OwnedFd) -> Result<Relay> {
    // Only the master is made non-blocking: it is ours alone, while `input` and `output` share
    // their status flags with the caller's stdio. A blocking write to the master could never be
    // interrupted by `finish` once the container stops reading.
    set_nonblocking(&master).map_err(|e| Error::sys("making the pty master non-blocking", e))?;
    let (wake, stop) = pipe().map_err(|e| Error::sys("creating the wake-up pipe of the tty relay", e))?;
    let wake = Arc::new(wake);
    let master = Arc::new(master);
    // Built before the threads so that, if one fails to start, dropping it stops the other.
    let mut relay = Relay { master: Arc::clone(&master), stop: Some(stop), input: None, output: None };
    let (out_master, out_wake) = (Arc::clone(&master), Arc::clone(&wake));
    relay.output = Some(spawn("strata-tty-out", move || pump_output(&out_master, &out_wake, &output))?);
    if let Some(input) = input {
        relay.input = Some(spawn("strata-tty-in", move || pump_input(&input, &master, &wake))?);
    }
    Ok(relay)
}

impl Relay {
    /// A fd of the master for copy_window_size while the relay runs.
    pub fn master(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    /// After the container has exited: waits until all its output reached `output`, stops the
    /// input side, joins. The wait ends when the master reports EIO (every slave fd is closed),
    /// or after a second without output, so a slave fd leaked elsewhere cannot hang it; it does
    /// wait for whoever reads `output`.
    pub fn finish(mut self) {
        self.stop.take();
        for handle in [self.output.take(), self.input.take()].into_iter().flatten() {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Relay {
    /// Without `finish` (an error path): stops the threads but does not wait for them, so that a
    /// container still running cannot block the caller's unwinding.
    fn drop(&mut self) {
        self.stop.take();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| Error::sys("starting the tty relay", e))
}

/// Master → output until EIO. Once `wake` reports, keeps going until the master is drained.
fn pump_output(master: &OwnedFd, wake: &OwnedFd, output: &OwnedFd) {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut finishing = false;
    // Once `output` fails (a closed pipe), output is still read and dropped: a container blocked
    // on a full pty would never exit.
    let mut sink = Some(output);
    loop {
        let mut fds = [pollfd(master, libc::POLLIN), pollfd(wake, libc::POLLIN)];
        let (count, timeout) = if finishing { (1, DRAIN_IDLE.as_millis() as libc::c_int) } else { (2, -1) };
        match poll(&mut fds[..count], timeout) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        if !finishing && fds[1].revents != 0 {
            finishing = true;
        }
        if fds[0].revents & libc::POLLNVAL != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        loop {
            match read(master, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if let Some(out) = sink {
                        if write_all(out, &buf[..n], None).is_err() {
                            sink = None;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // EIO: every slave fd is closed and all they wrote has been read.
                Err(_) => return,
            }
        }
    }
}

/// Input → master until input EOF or `wake` reports.
fn pump_input(input: &OwnedFd, master: &OwnedFd, wake: &OwnedFd) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        // A terminal can stay silent forever, so input is only read once poll says it will not
        // block; `wake` ends the wait.
        let mut fds = [pollfd(input, libc::POLLIN), pollfd(wake, libc::POLLIN)];
        match poll(&mut fds, -1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        if fds[1].revents != 0 || fds[0].revents & libc::POLLNVAL != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let n = match read(input, &mut buf) {
            // EOF: the master stays open, as it is also the container's output and its terminal;
            // closing it would hang the container up.
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => continue,
            Err(_) => return,
        };
        if write_all(master, &buf[..n], Some(wake)).is_err() {
            return;
        }
    }
}

/// Writes all of `data`, waiting on EAGAIN until `fd` is writable. With `wake`, gives up when it
/// reports (as an error).
fn write_all(fd: &OwnedFd, mut data: &[u8], wake: Option<&OwnedFd>) -> io::Result<()> {
    while !data.is_empty() {
        match write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [pollfd(fd, libc::POLLOUT), pollfd(wake.unwrap_or(fd), libc::POLLIN)];
                let count = if wake.is_some() { 2 } else { 1 };
                match poll(&mut fds[..count], -1) {
                    Ok(_) if count == 2 && fds[1].revents != 0 => return Err(io::ErrorKind::Interrupted.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

fn write(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    cvt_size(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
}

fn pollfd(fd: &OwnedFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 }
}

fn poll(fds: &mut [libc::pollfd], timeout: libc::c_int) -> io::Result<libc::c_int> {
    // SAFETY: the slice is valid for its length.
    cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) })
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

fn tcgetattr(fd: BorrowedFd<'_>) -> io::Result<libc::termios> {
    // SAFETY: termios is plain integers; tcgetattr fills it.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut termios) })?;
    Ok(termios)
}

fn tcsetattr(fd: BorrowedFd<'_>, termios: &libc::termios) -> io::Result<()> {
    loop {
        // SAFETY: reads one termios.
        match cvt(unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, termios) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    fn set_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) {
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) }).unwrap();
    }

    fn size_of(fd: BorrowedFd<'_>) -> (u16, u16) {
        // SAFETY: winsize is plain integers.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) }).unwrap();
        (size.ws_row, size.ws_col)
    }

    /// Runs `script` with the slave as its controlling terminal and stdio; returns the master.
    fn spawn_on(pty: Pty, script: &str) -> (Child, OwnedFd) {
        let slave = pty.slave.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: attach_as_controlling only makes system calls.
        unsafe { cmd.pre_exec(move || attach_as_controlling(slave)) };
        let child = cmd.spawn().unwrap();
        // Only the child holds the slave now, so its exit is what ends the output.
        drop(pty.slave);
        (child, pty.master)
    }

    fn collect(fd: OwnedFd, delay: Duration) -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut out = Vec::new();
            File::from(fd).read_to_end(&mut out).unwrap();
            out
        })
    }

    #[test]
    fn open_gives_a_char_device_slave_with_the_size_of_size_from() {
        let from = open(None).unwrap();
        set_size(from.master.as_fd(), 33, 77);
        let pty = open(Some(from.slave.as_fd())).unwrap();
        let path = slave_path(&pty).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_char_device(), "{}", path.display());
        let ours = File::from(pty.slave.try_clone().unwrap()).metadata().unwrap();
        assert_eq!(meta.rdev(), ours.rdev(), "{} is another pty", path.display());
        assert_eq!(size_of(pty.slave.as_fd()), (33, 77));
        assert_eq!(size_of(pty.master.as_fd()), (33, 77));
    }

    #[test]
    fn open_without_a_terminal_to_copy_from() {
        let (r, _w) = pipe().unwrap();
        let pty = open(Some(r.as_fd())).unwrap();
        assert_eq!(size_of(pty.slave.as_fd()), (0, 0));
    }

    #[test]
    fn raw_mode_is_restored_on_drop() {
        let pty = open(None).unwrap();
        let before = tcgetattr(pty.slave.as_fd()).unwrap();
        assert_ne!(before.c_lflag & libc::ICANON, 0);
        assert_ne!(before.c_lflag & libc::ECHO, 0);
        let guard = raw_mode_if_tty(pty.slave.as_fd()).unwrap().expect("a pty is a terminal");
        let raw = tcgetattr(pty.slave.as_fd()).unwrap();
        assert_eq!(raw.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        drop(guard);
        let after = tcgetattr(pty.slave.as_fd()).unwrap();
        assert_eq!((after.c_lflag, after.c_iflag, after.c_oflag), (before.c_lflag, before.c_iflag, before.c_oflag));
    }

    #[test]
    fn raw_mode_of_a_pipe_is_none() {
        let (r, _w) = pipe().unwrap();
        assert!(raw_mode_if_tty(r.as_fd()).unwrap().is_none());
    }

    #[test]
    fn window_size_copies_between_ptys_and_not_from_a_pipe() {
        let (a, b) = (open(None).unwrap(), open(None).unwrap());
        set_size(a.master.as_fd(), 40, 100);
        copy_window_size(a.slave.as_fd(), b.master.as_fd());
        assert_eq!(size_of(b.slave.as_fd()), (40, 100));
        let (r, _w) = pipe().unwrap();
        copy_window_size(r.as_fd(), b.master.as_fd());
        assert_eq!(size_of(b.slave.as_fd()), (40, 100));
    }

    #[test]
    fn relay_feeds_input_and_drains_output_after_exit() {
        let (mut child, master) = spawn_on(open(None).unwrap(), "read x; echo got:$x; exit 3");
        let (in_r, in_w) = pipe().unwrap();
        let (out_r, out_w) = pipe().unwrap();
        let collected = collect(out_r, Duration::ZERO);
        let relay = start_relay(master, Some(in_r), out_w).unwrap();
        // Then EOF: the container must keep its terminal and still answer.
        File::from(in_w).write_all(b"hello\n").unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(3));
        let start = Instant::now();
        relay.finish();
        assert!(start.elapsed() < DRAIN_IDLE, "finish waited for silence, not EIO: {:?}", start.elapsed());
        let out = String::from_utf8_lossy(&collected.join().unwrap()).into_owned();
        assert!(out.contains("got:hello"), "{out:?}");
    }

    #[test]
    fn finish_returns_while_a_terminal_input_stays_silent() {
        // Stands for the user's terminal: reading its slave blocks until someone types.
        let user = open(None).unwrap();
        let (mut child, master) = spawn_on(open(None).unwrap(), "exec 3</dev/tty && echo has-ctty");
        let (out_r, out_w) = pipe().unwrap();
        let collected = collect(out_r, Duration::ZERO);
        let relay = start_relay(master, Some(user.slave.try_clone().unwrap()), out_w).unwrap();
        copy_window_size(user.slave.as_fd(), relay.master());
        assert!(child.wait().unwrap().success());
        let start = Instant::now();
        relay.finish();
        assert!(start.elapsed() < DRAIN_IDLE, "{:?}", start.elapsed());
        let out = String::from_utf8_lossy(&collected.join().unwrap()).into_owned();
        assert!(out.contains("has-ctty"), "{out:?}");
    }

    #[test]
    fn finish_gives_up_on_a_slave_that_stays_open() {
        let pty = open(None).unwrap();
        File::from(pty.slave.try_clone().unwrap()).write_all(b"last words").unwrap();
        let (out_r, out_w) = pipe().unwrap();
        let collected = collect(out_r, Duration::ZERO);
        let relay = start_relay(pty.master, None, out_w).unwrap();
        let start = Instant::now();
        relay.finish();
        assert!(start.elapsed() < DRAIN_IDLE * 5, "{:?}", start.elapsed());
        assert!(String::from_utf8_lossy(&collected.join().unwrap()).contains("last words"));
        drop(pty.slave);
    }

    #[test]
    fn all_output_reaches_a_slow_non_blocking_output() {
        const LEN: usize = 300_000;
        let (mut child, master) = spawn_on(open(None).unwrap(), &format!("head -c {LEN} /dev/zero | tr '\\0' a"));
        let (out_r, out_w) = pipe().unwrap();
        // A non-blocking output that fills up makes the relay meet EAGAIN and partial writes.
        set_nonblocking(&out_w).unwrap();
        let collected = collect(out_r, Duration::from_millis(200));
        let relay = start_relay(master, None, out_w).unwrap();
        assert!(child.wait().unwrap().success());
        relay.finish();
        let out = collected.join().unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'a').count(), LEN);
    }
}
