//! Evaluating a parsed selector against one message, with SQL's three-valued logic: a
//! missing header is NULL, and anything computed from NULL is NULL ("unknown") except what
//! `IS [NOT] NULL`, `AND` (FALSE wins) and `OR` (TRUE wins) decide without it. A message
//! matches only when the whole selector is TRUE.
//!
//! Types follow JMS: exact numbers (i64) and approximate ones (f64), promoted to f64 when
//! mixed; comparing values of unlike types is FALSE, not unknown. Header values arrive as
//! strings (STOMP has no other kind), so, as ActiveMQ's STOMP transport does
//! (`convert_string_expressions`), a string is taken as a number where the other side or the
//! operator needs one (`'42'` = 42, `'2.5'` > 2), and as a boolean beside a boolean or where a
//! condition is needed (`'true'`/`'false'`, any case); a string that does not convert makes
//! the comparison FALSE, and arithmetic on it NULL.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::parser::{ArithOp, CmpOp, Expr, Ident, Literal};
use super::MessageView;

#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(Cow<'a, str>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Long(i64),
    Double(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Long(l) => l as f64,
            Num::Double(d) => d,
        }
    }
}

/// A string as a number, when it reads as one (decimal, optionally signed, optionally with a
/// fraction or exponent). Words such as `NaN` or `inf`, which Rust would read, are not numbers
/// here.
fn parse_number(s: &str) -> Option<Num> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    if let Ok(l) = s.parse::<i64>() {
        return Some(Num::Long(l));
    }
    s.parse::<f64>()
        .ok()
        .filter(|d| d.is_finite())
        .map(Num::Double)
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

impl Value<'_> {
    fn number(&self) -> Option<Num> {
        match self {
            Value::Long(l) => Some(Num::Long(*l)),
            Value::Double(d) => Some(Num::Double(*d)),
            Value::Str(s) => parse_number(s),
            Value::Null | Value::Bool(_) => None,
        }
    }

    /// As a condition: TRUE, FALSE or unknown (`None`).
    fn truth(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => parse_bool(s),
            _ => None,
        }
    }
}

fn truth_value(t: Option<bool>) -> Value<'static> {
    t.map_or(Value::Null, Value::Bool)
}

fn compare_numbers(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Long(x), Num::Long(y)) => Some(x.cmp(&y)),
        _ => a.as_f64().partial_cmp(&b.as_f64()),
    }
}

/// `=` between two non-NULL values: `None` when their types cannot be compared.
fn equal(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x == y),
        (Value::Bool(x), Value::Bool(y)) => Some(x == y),
        (Value::Bool(x), Value::Str(s)) | (Value::Str(s), Value::Bool(x)) => {
            parse_bool(s).map(|y| *x == y)
        }
        (Value::Bool(_), _) | (_, Value::Bool(_)) => None,
        _ => compare_numbers(a.number()?, b.number()?).map(|o| o == Ordering::Equal),
    }
}

fn compare(op: CmpOp, a: &Value, b: &Value) -> Value<'static> {
    if *a == Value::Null || *b == Value::Null {
        return Value::Null;
    }
    let result = match op {
        CmpOp::Eq => equal(a, b).unwrap_or(false),
        CmpOp::Ne => equal(a, b).is_some_and(|e| !e),
        _ => match (a.number(), b.number()) {
            (Some(x), Some(y)) => compare_numbers(x, y).is_some_and(|o| match op {
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }),
            _ => false,
        },
    };
    Value::Bool(result)
}

fn arith(op: ArithOp, a: &Value, b: &Value) -> Value<'static> {
    let (Some(x), Some(y)) = (a.number(), b.number()) else {
        return Value::Null;
    };
    match (x, y) {
        (Num::Long(x), Num::Long(y)) => match op {
            ArithOp::Add => Value::Long(x.wrapping_add(y)),
            ArithOp::Sub => Value::Long(x.wrapping_sub(y)),
            ArithOp::Mul => Value::Long(x.wrapping_mul(y)),
            // Java throws on an integer division by zero, and the message does not match.
            ArithOp::Div if y == 0 => Value::Null,
            ArithOp::Div => Value::Long(x.wrapping_div(y)),
        },
        _ => {
            let (x, y) = (x.as_f64(), y.as_f64());
            Value::Double(match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div => x / y,
            })
        }
    }
}

fn ident<'a>(i: &'a Ident, msg: &'a dyn MessageView) -> Value<'a> {
    let text = |s: Option<&'a str>| s.map_or(Value::Null, |s| Value::Str(Cow::Borrowed(s)));
    match i {
        Ident::Priority => Value::Long(msg.priority() as i64),
        Ident::Timestamp => Value::Long(msg.timestamp_ms() as i64),
        Ident::DeliveryMode => Value::Str(Cow::Borrowed(if msg.persistent() {
            "PERSISTENT"
        } else {
            "NON_PERSISTENT"
        })),
        Ident::Type => text(msg.jms_type()),
        Ident::CorrelationId => text(msg.correlation_id()),
        Ident::MessageId => msg
            .message_id()
            .map_or(Value::Null, |s| Value::Str(Cow::Owned(s))),
        Ident::Header(name) => text(msg.header(name)),
    }
}

pub(super) fn matches(e: &Expr, msg: &dyn MessageView) -> bool {
    eval(e, msg).truth() == Some(true)
}

fn eval<'a>(e: &'a Expr, msg: &'a dyn MessageView) -> Value<'a> {
    match e {
        Expr::Lit(l) => match l {
            Literal::Bool(b) => Value::Bool(*b),
            Literal::Long(l) => Value::Long(*l),
            Literal::Double(d) => Value::Double(*d),
            Literal::Str(s) => Value::Str(Cow::Borrowed(s)),
        },
        Expr::Ident(i) => ident(i, msg),
        Expr::Neg(x) => match eval(x, msg).number() {
            Some(Num::Long(l)) => Value::Long(l.wrapping_neg()),
            Some(Num::Double(d)) => Value::Double(-d),
            None => Value::Null,
        },
        Expr::Arith(op, a, b) => arith(*op, &eval(a, msg), &eval(b, msg)),
        Expr::Cmp(op, a, b) => compare(*op, &eval(a, msg), &eval(b, msg)),
        Expr::Between {
            value,
            low,
            high,
            negated,
        } => {
            let v = eval(value, msg);
            let lo = compare(CmpOp::Ge, &v, &eval(low, msg)).truth();
            let hi = compare(CmpOp::Le, &v, &eval(high, msg)).truth();
            let inside = and([lo, hi]);
            truth_value(if *negated { inside.map(|b| !b) } else { inside })
        }
        Expr::In {
            value,
            list,
            negated,
        } => match eval(value, msg) {
            Value::Null => Value::Null,
            Value::Str(s) => Value::Bool(list.iter().any(|x| *x == *s) != *negated),
            _ => Value::Bool(false),
        },
        Expr::Like {
            value,
            pattern,
            negated,
        } => match eval(value, msg) {
            Value::Null => Value::Null,
            Value::Str(s) => Value::Bool(pattern.matches(&s) != *negated),
            _ => Value::Bool(false),
        },
        Expr::IsNull { value, negated } => {
            Value::Bool((eval(value, msg) == Value::Null) != *negated)
        }
        Expr::Not(x) => truth_value(eval(x, msg).truth().map(|b| !b)),
        Expr::And(terms) => truth_value(and(terms.iter().map(|t| eval(t, msg).truth()))),
        Expr::Or(terms) => {
            let mut unknown = false;
            for t in terms {
                match eval(t, msg).truth() {
                    Some(true) => return Value::Bool(true),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            truth_value(if unknown { None } else { Some(false) })
        }
    }
}

/// SQL's AND: FALSE if any is FALSE, else unknown if any is unknown, else TRUE.
fn and(terms: impl IntoIterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for t in terms {
        match t {
            Some(false) => return Some(false),
            Some(true) => {}
            None => unknown = true,
        }
    }
    if unknown {
        None
    } else {
        Some(true)
    }
}
