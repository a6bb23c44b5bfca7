//! What went wrong with a remote compute, kept typed until the provider says it in one of its
//! interfaces' terms.

/// What went wrong with a remote compute, kept typed until it is said as a wasi:nn error (a code
/// and a message) or as an infer error (a case of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NotFound,
    InvalidArgument,
    Security,
    Timeout,
    Unsupported,
    /// The server's queue is full (503 Overloaded): retry shortly.
    Overloaded,
    /// The server cannot serve now (another 503).
    Unavailable,
    Runtime,
}

/// A remote compute's failure and its message.
#[derive(Debug)]
pub struct RemoteError {
    pub failure: Failure,
    pub message: String,
}

impl RemoteError {
    pub fn new(failure: Failure, message: impl Into<String>) -> RemoteError {
        RemoteError { failure, message: message.into() }
    }
}
