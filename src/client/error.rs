//! What can go wrong for a client, as one error type the application can match on.

use super::*;

/// What kind of failure a [`ClientError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The broker could not be reached.
    Connect,
    /// The broker refused a request (see the error code).
    Refused,
    /// The connection is closed.
    Closed,
    /// A deadline passed.
    Timeout,
    /// A bad URL or argument.
    InvalidArgument,
    /// The broker sent something this client does not understand.
    Protocol,
    /// A failover client lost its connection before the broker confirmed the request; the
    /// error says what became of it.
    Interrupted,
    /// A transaction was rolled back (the connection failed over while it was open, or its
    /// commit was in doubt): nothing it sent was delivered, nothing it acknowledged counts.
    RolledBack,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the broker refused: {message} ({code:?})")]
    Refused { code: ErrorCode, message: String },
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("interrupted by a failover: {0}")]
    Interrupted(String),
    #[error("transaction rolled back: {0}")]
    RolledBack(String),
}

impl ClientError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Connect { .. } => ErrorKind::Connect,
            ClientError::Refused { .. } => ErrorKind::Refused,
            ClientError::Closed(_) => ErrorKind::Closed,
            ClientError::Timeout(_) => ErrorKind::Timeout,
            ClientError::Url(_) | ClientError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ClientError::Protocol(_) => ErrorKind::Protocol,
            ClientError::Interrupted(_) => ErrorKind::Interrupted,
            ClientError::RolledBack(_) => ErrorKind::RolledBack,
        }
    }

    /// The broker's error code, for `Refused` errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(super) fn from_frame(e: &proto::Error) -> ClientError {
        ClientError::Refused {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unknown),
            message: e.message.clone(),
        }
    }
}
