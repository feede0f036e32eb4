//! The network of a `--net none` container: a new network namespace whose loopback interface is
//! brought up, as Docker does. Runs inside the container's namespaces.

use std::io;

use crate::error::{Error, Result};

/// Sets `lo` up in the current network namespace.
pub fn loopback_up() -> Result<()> {
    let fail = |e| Error::sys("bringing the loopback interface up", e);
    // SAFETY: a datagram socket used only for interface ioctls, closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; the name is NUL-terminated within IFNAMSIZ.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    let outcome = (|| {
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the flags member of our ifreq.
        if unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        if unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    outcome.map_err(fail)
}
