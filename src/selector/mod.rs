//! JMS message selectors: the SQL-92 subset of JMS 1.1 §3.8, parsed by hand (no maintained
//! Rust crate exists) and evaluated against anything that shows a message through
//! [`MessageView`].
//!
//! Owns: the selector language — lexing, parsing (with errors that name the character position
//! and what was expected) and three-valued evaluation. Must not touch: the broker, protocols or
//! anything else of meshmq; it is a leaf that the broker and the connectors call. Invariants:
//! parsing never panics and never recurses without bound (trees are depth-limited), whatever
//! the text; evaluation is pure, allocation-light and cannot fail — a message either matches
//! (the selector is TRUE) or does not (FALSE or unknown).
//!
//! What a selector can name: `JMSPriority` (0..=9), `JMSTimestamp` (ms since the epoch),
//! `JMSDeliveryMode` (`'PERSISTENT'` or `'NON_PERSISTENT'`), `JMSType` (the `type` header),
//! `JMSCorrelationID`, `JMSMessageID` (as consumers see it, `ID:producer:sequence`), and any
//! user header by its exact (case-sensitive) name. Header values are strings; see `eval.rs`
//! for how they stand in for numbers and booleans (as ActiveMQ's STOMP transport does).

mod eval;
mod lexer;
mod like;
mod parser;
#[cfg(test)]
mod tests;

/// What a selector can see of a message.
pub trait MessageView {
    /// A user header's value, `None` when the message has no such header.
    fn header(&self, name: &str) -> Option<&str>;
    fn priority(&self) -> u8;
    fn timestamp_ms(&self) -> u64;
    fn persistent(&self) -> bool;
    /// `JMSType`, `None` when unset.
    fn jms_type(&self) -> Option<&str>;
    /// `JMSCorrelationID`, `None` when unset.
    fn correlation_id(&self) -> Option<&str>;
    /// `JMSMessageID`, `None` when the message has none.
    fn message_id(&self) -> Option<String>;
}

/// A selector that does not parse: where (1-based character position), what the grammar
/// expected there, and what it found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {position}: expected {expected}, found {found}")]
pub struct SelectorError {
    pub position: usize,
    pub expected: String,
    pub found: String,
}

impl SelectorError {
    fn new(position: usize, expected: &str, found: &str) -> SelectorError {
        SelectorError {
            position,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

/// A parsed selector, ready to test messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    text: String,
    expr: parser::Expr,
}

impl Selector {
    /// Parses `text`. An empty (or all-blank) text is an error here: callers treat "no
    /// selector" before asking.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let expr = parser::parse(lexer::lex(text)?)?;
        Ok(Selector {
            text: text.to_string(),
            expr,
        })
    }

    /// True when the selector is TRUE for `msg` (FALSE and unknown do not match).
    pub fn matches(&self, msg: &dyn MessageView) -> bool {
        eval::matches(&self.expr, msg)
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }
}
