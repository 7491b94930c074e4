//! The step guard both handshake state machines run every call through.
//!
//! Each side has its own [`Step`] enum (the messages differ), but the
//! rules are the same: a call is refused once the handshake is poisoned
//! or when it comes out of order, a call that succeeds moves it to the
//! next step, and any failure poisons it for good.

use crate::error::{Error, Result};

/// Where one side's handshake stands.
pub(super) trait Step: Copy + Eq {
    /// The step a failure leaves the handshake in, for good.
    const FAILED: Self;

    /// The name an [`Error::State`] reports.
    fn name(self) -> &'static str;

    /// Ok at `at`; otherwise the State error for `op` (does not poison).
    fn expect(self, at: Self, op: &'static str) -> Result<()> {
        if self != at {
            return Err(Error::State { op, state: self.name() });
        }
        Ok(())
    }
}

/// A handshake that advances one [`Step`] per call.
pub(super) trait StepMachine: Sized {
    /// Its steps.
    type Step: Step;

    /// Its current step, to read and advance.
    fn step_mut(&mut self) -> &mut Self::Step;

    /// Runs one step from `at` to `next`: refuses if poisoned or not at
    /// `at`, moves to `next` if `f` succeeds, poisons if it fails.
    fn advance<T>(
        &mut self,
        at: Self::Step,
        next: Self::Step,
        op: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let step = *self.step_mut();
        if step == Self::Step::FAILED {
            return Err(Error::Poisoned);
        }
        let result = step.expect(at, op).and_then(|()| f(self));
        *self.step_mut() = if result.is_ok() { next } else { Self::Step::FAILED };
        result
    }
}

/// Declares a side's `Step` enum, in message order, each step with the
/// name an [`Error::State`] reports, plus `Failed` ("failed"), and makes
/// `$machine` (which keeps it in its `step` field) a [`StepMachine`].
/// Both sides declare theirs through this, so they cannot drift apart in
/// how a step is named, poisoned or advanced.
macro_rules! steps {
    ($(#[$doc:meta])* $machine:ident: $($step:ident => $name:literal,)+) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Step {
            $($step,)+
            Failed,
        }

        impl $crate::handshake::step::Step for Step {
            const FAILED: Self = Step::Failed;

            fn name(self) -> &'static str {
                match self {
                    $(Step::$step => $name,)+
                    Step::Failed => "failed",
                }
            }
        }

        impl $crate::handshake::step::StepMachine for $machine {
            type Step = Step;

            fn step_mut(&mut self) -> &mut Step {
                &mut self.step
            }
        }
    };
}
pub(super) use steps;
