//! A command's answer: status, results, output length and the error text.

use core::fmt;
use covm_guest_abi::mailbox::words::{self, WORDS};
use covm_guest_abi::mailbox::{header::ERROR_TEXT_MAX, status};

/// Up to [`ERROR_TEXT_MAX`] bytes of UTF-8, cut at a character boundary.
#[derive(Clone)]
pub struct ErrorText {
    buf: [u8; ERROR_TEXT_MAX],
    len: usize,
}

impl ErrorText {
    /// No text.
    pub const fn new() -> Self {
        ErrorText {
            buf: [0; ERROR_TEXT_MAX],
            len: 0,
        }
    }

    /// `args`, formatted and cut to fit.
    pub fn format(args: fmt::Arguments<'_>) -> Self {
        let mut text = ErrorText::new();
        let _ = fmt::Write::write_fmt(&mut text, args);
        text
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole characters are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Default for ErrorText {
    fn default() -> Self {
        ErrorText::new()
    }
}

impl fmt::Write for ErrorText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = ERROR_TEXT_MAX - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            // Full: stop formatting.
            return Err(fmt::Error);
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one command produced (its output is already in `FROM_AGENT`).
#[derive(Debug, Clone)]
pub struct Reply {
    /// [`covm_guest_abi::mailbox::status`].
    pub status: u32,
    /// The results' words (the command's reply type,
    /// `covm_guest_abi::mailbox::words`).
    pub results: [u64; WORDS],
    /// Bytes written to `FROM_AGENT`.
    pub out_len: u64,
    /// Why it failed (empty on success).
    pub error: ErrorText,
}

/// A command's success: its reply and output length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done<R> {
    pub reply: R,
    pub out_len: u64,
}

impl<R: words::Reply> Done<R> {
    /// `reply`, with no output.
    pub fn new(reply: R) -> Self {
        Done { reply, out_len: 0 }
    }

    pub fn with_output(mut self, out_len: usize) -> Self {
        self.out_len = out_len as u64;
        self
    }
}

/// A command's failure: a status and the text saying why. Results
/// produced before the failure (e.g. the counts of records imported
/// before a bad one) are kept; its output is not handed out.
#[derive(Debug, Clone)]
pub(crate) struct Fail {
    pub status: u32,
    pub text: ErrorText,
    pub partial: [u64; WORDS],
}

impl Fail {
    pub fn new(status: u32, args: fmt::Arguments<'_>) -> Self {
        Fail {
            status,
            text: ErrorText::format(args),
            partial: [0; WORDS],
        }
    }

    /// The failure, with what the command did before it.
    pub fn with_partial(mut self, partial: impl words::Reply) -> Self {
        self.partial = partial.to_words();
        self
    }
}

/// `Fail::new(status, format_args!(...))`.
macro_rules! fail {
    ($status:expr, $($arg:tt)*) => {
        $crate::reply::Fail::new($status, format_args!($($arg)*))
    };
}
pub(crate) use fail;

pub(crate) type Outcome<R> = Result<Done<R>, Fail>;

impl From<Fail> for Reply {
    fn from(fail: Fail) -> Self {
        Reply {
            status: fail.status,
            results: fail.partial,
            out_len: 0,
            error: fail.text,
        }
    }
}

impl<R: words::Reply> From<Outcome<R>> for Reply {
    fn from(outcome: Outcome<R>) -> Self {
        match outcome {
            Ok(done) => Reply {
                status: status::OK,
                results: done.reply.to_words(),
                out_len: done.out_len,
                error: ErrorText::new(),
            },
            Err(fail) => Reply::from(fail),
        }
    }
}

/// Lowercase hex of `bytes`, for messages.
pub(crate) struct Hex<'b>(pub &'b [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_char_boundary() {
        let long = "é".repeat(200);
        let t = ErrorText::format(format_args!("x{long}"));
        assert_eq!(t.as_bytes().len(), ERROR_TEXT_MAX - 1);
        assert!(t.as_str().starts_with("xéé"));
        let t = ErrorText::format(format_args!("status {} of {}", 3, "x"));
        assert_eq!(t.as_str(), "status 3 of x");
    }
}
