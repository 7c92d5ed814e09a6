//! `slipway run qemu --boot-report`: the guest's boot timeline, read off its console.
//!
//! At the end of the boot the init prints one line, `slipway-init: boot timeline (ms since the
//! kernel started): kernel 812 | mounts 830 | ...`, each step with the time it ended (and keeps
//! the same steps in the guest's `/run/slipway/boot.json`). [`relay`] copies the console through
//! and, when that line passes, prints the timeline as a table.

use std::io::{BufRead, Write};

/// What the init prints before the steps (pkg/init's timeline module).
pub const MARKER: &str = "boot timeline (ms since the kernel started): ";

/// One step of the boot and when it ended, in ms since the kernel started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub step: String,
    pub ms: u64,
}

/// The steps of a console line that carries the timeline; None for any other line, or one
/// whose steps do not parse (a line cut by other output, say).
pub fn parse_line(line: &str) -> Option<Vec<Step>> {
    let (_, rest) = line.split_once(MARKER)?;
    rest.trim_end()
        .split(" | ")
        .map(|part| {
            let (step, ms) = part.rsplit_once(' ')?;
            Some(Step {
                step: step.to_owned(),
                ms: ms.parse().ok()?,
            })
        })
        .collect()
}

/// The timeline as a table: each step, when it ended and how long it took after the previous.
pub fn table(steps: &[Step]) -> String {
    let width = steps
        .iter()
        .map(|s| s.step.len())
        .chain(["step".len()])
        .max()
        .unwrap_or(4);
    let mut out = String::from("boot timeline (ms since the kernel started)\n");
    out += &format!("  {:<width$}  {:>8}  {:>8}\n", "step", "at ms", "took ms");
    let mut previous = 0;
    for s in steps {
        out += &format!(
            "  {:<width$}  {:>8}  {:>8}\n",
            s.step,
            s.ms,
            s.ms.saturating_sub(previous)
        );
        previous = s.ms;
    }
    out
}

/// Copies the console from `console` to `out` line by line as it comes and, right after the
/// timeline's line, writes the table to `out` too. Returns the timeline, if one went by.
pub fn relay(console: impl BufRead, mut out: impl Write) -> Option<Vec<Step>> {
    let mut found = None;
    let mut console = console;
    let mut line = Vec::new();
    loop {
        line.clear();
        match console.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // A closed stdout (`| head`) must not stop the relay: QEMU would block on a full pipe.
        let _ = out.write_all(&line).and_then(|()| out.flush());
        if found.is_none()
            && let Some(steps) = parse_line(&String::from_utf8_lossy(&line))
        {
            let _ = out
                .write_all(table(&steps).as_bytes())
                .and_then(|()| out.flush());
            found = Some(steps);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "slipway-init: boot timeline (ms since the kernel started): initramfs 640 | kernel 812 | mounts 830 | modules 1203 | onboot 000-hello 1800 | engine 1850 | first service web 2500\r\n";

    #[test]
    fn the_timeline_line_parses_into_ordered_steps() {
        let steps = parse_line(LINE).unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            names,
            [
                "initramfs",
                "kernel",
                "mounts",
                "modules",
                "onboot 000-hello",
                "engine",
                "first service web"
            ]
        );
        assert_eq!(steps[6].ms, 2500);
        assert_eq!(parse_line("[    1.234] Run /init as init process"), None);
        assert_eq!(parse_line(&LINE.replace("812", "8x2")), None);
    }

    #[test]
    fn the_relay_copies_the_console_and_adds_the_table_after_the_line() {
        let console = format!("before\n{LINE}after\n");
        let mut out = Vec::new();
        let steps = relay(console.as_bytes(), &mut out).unwrap();
        assert_eq!(steps.len(), 7);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with(&format!("before\n{LINE}")), "{out}");
        assert!(out.ends_with("after\n"), "{out}");
        assert!(
            out.contains("  first service web      2500       650\n"),
            "{out}"
        );
    }
}
