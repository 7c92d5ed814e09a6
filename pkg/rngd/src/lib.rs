//! `rngd`: LinuxKit's `rngd` package for Slipway. It reads the hardware random number generator
//! (`/dev/hwrng`: virtio-rng in a VM, a TPM or the CPU's on real machines, whichever the kernel
//! made current) and credits what it reads to the kernel's pool with the RNDADDENTROPY ioctl, so
//! that early-boot programs do not wait for entropy.
//!
//! `rngd [-1]`: `-1` feeds the pool once and exits (an onboot container); without it the program
//! keeps going as a service, feeding the pool whenever the kernel wants more (it polls
//! /dev/random for writing) and at least once a minute.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

pub const HWRNG: &str = "/dev/hwrng";
const RANDOM: &str = "/dev/random";
/// 512 bytes per round: what the kernel's pool takes at most at a time.
const CHUNK: usize = 512;
/// `_IOW('R', 0x03, int[2])`. ioctl(2)'s request is an unsigned long in glibc and an int in
/// musl (the image's libc): the call casts it to whichever.
const RNDADDENTROPY: u32 = 0x4008_5203;

/// `struct rand_pool_info` with its buffer.
#[repr(C)]
struct PoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; CHUNK],
}

/// Reads one chunk from `hwrng` and credits it to `random`; returns the bits credited.
fn feed(hwrng: &mut File, random: &File) -> Result<usize, String> {
    let mut info = PoolInfo {
        entropy_count: 0,
        buf_size: CHUNK as libc::c_int,
        buf: [0; CHUNK],
    };
    hwrng
        .read_exact(&mut info.buf)
        .map_err(|e| format!("reading {HWRNG}: {e}"))?;
    info.entropy_count = (CHUNK * 8) as libc::c_int;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes follow the header; the
    // struct is repr(C) with exactly that layout and lives for the call.
    let r = unsafe {
        libc::ioctl(
            random.as_raw_fd(),
            RNDADDENTROPY as _,
            &info as *const PoolInfo,
        )
    };
    if r != 0 {
        return Err(format!(
            "RNDADDENTROPY on {RANDOM}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(CHUNK * 8)
}

fn which_rng() -> String {
    std::fs::read_to_string("/sys/class/misc/hw_random/rng_current")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Waits until the kernel wants entropy (/dev/random writable) or a minute has passed.
fn wait_for_demand(random: &File) {
    let mut fds = [libc::pollfd {
        fd: random.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, 60_000) };
}

pub fn main() -> ExitCode {
    let once = std::env::args().skip(1).any(|a| a == "-1");
    let opened = File::open(HWRNG).and_then(|h| {
        let r = std::fs::OpenOptions::new().write(true).open(RANDOM)?;
        Ok((h, r))
    });
    let (mut hwrng, random) = match opened {
        Ok(files) => files,
        Err(e) => {
            println!("rngd: error: no hardware RNG: opening {HWRNG} and {RANDOM}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match feed(&mut hwrng, &random) {
        Ok(bits) => println!(
            "rngd: added {bits} bits of entropy from {HWRNG} ({})",
            which_rng()
        ),
        Err(e) => {
            println!("rngd: error: {e}");
            return ExitCode::FAILURE;
        }
    }
    if once {
        return ExitCode::SUCCESS;
    }
    loop {
        wait_for_demand(&random);
        if let Err(e) = feed(&mut hwrng, &random) {
            println!("rngd: error: {e}");
            std::thread::sleep(std::time::Duration::from_secs(10));
        }
    }
}
