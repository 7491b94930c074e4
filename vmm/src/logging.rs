//! covm's log: tracing to standard error or a file.

use std::path::Path;
use tracing_subscriber::filter::LevelFilter;

/// The level for `-v` given `count` times: warnings by default, then info
/// (boot markers), debug, trace.
pub fn level(count: u8) -> LevelFilter {
    match count {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Installs the global subscriber.
pub fn init(verbosity: u8, file: Option<&Path>) -> std::io::Result<()> {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level(verbosity))
        .with_thread_names(true);
    match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
        }
        // Colour codes only for a person at a terminal, not in a pipe or a
        // file (`covm -v ... 2>log`).
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}
