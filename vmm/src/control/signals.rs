//! SIGINT and SIGTERM as events of the control loop: a clean stop.

use super::messages::Event;
use std::sync::mpsc::Sender;

/// Delivers SIGINT and SIGTERM to the control loop as
/// [`Event::Signal`], from a thread of their own (a signal handler may not
/// take locks or send on a channel).
pub fn forward_stop_signals(events: Sender<Event>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if events.send(Event::Signal(signal)).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}
