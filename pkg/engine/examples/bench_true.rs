//! `bench_true BUNDLE COUNT`: creates, starts, waits for and deletes the container of `BUNDLE`
//! `COUNT` times through slipway-runtime (as the engine does for each run of a service) and
//! prints the mean time of one cycle in milliseconds. scripts/bench-engine compares it with
//! runc on the same bundle.

use std::path::PathBuf;
use std::time::Instant;

use slipway_runtime::{Runtime, Stdio};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(bundle), Some(count)) = (args.next(), args.next()) else {
        return Err("usage: bench_true BUNDLE COUNT".into());
    };
    let bundle = std::fs::canonicalize(PathBuf::from(bundle))?;
    let count: u32 = count.parse()?;
    let state = tempfile::tempdir()?;
    let runtime = Runtime::new(state.path())?;
    let started = Instant::now();
    for i in 0..count {
        let mut container =
            runtime.create_and_start(&format!("bench-{i}"), &bundle, Stdio::default())?;
        let status = container.wait()?;
        if !status.success() {
            return Err(format!("run {i}: {status}").into());
        }
        container.delete()?;
    }
    let mean = started.elapsed().as_secs_f64() * 1000.0 / f64::from(count);
    println!("{mean:.2}");
    Ok(())
}
