//! Tokens → an expression tree, by recursive descent over the JMS 1.1 §3.8 grammar
//! (lowest precedence first): `OR`, `AND`, `NOT`, comparisons (`=`, `<>`, `<`, `<=`, `>`,
//! `>=`, `[NOT] BETWEEN`, `[NOT] IN`, `[NOT] LIKE … [ESCAPE …]`, `IS [NOT] NULL`), `+ -`,
//! `* /`, unary `+ -`, then literals, identifiers and parentheses. Like ActiveMQ it refuses,
//! at parse time, what can never be true of any message: a string or boolean literal where a
//! number is needed, a number or string where a condition is needed. Trees are at most
//! [`MAX_DEPTH`] deep, so neither parsing nor evaluating nor dropping one can exhaust a stack.

use super::lexer::{Kw, Spanned, Tok};
use super::like::LikePattern;
use super::SelectorError;

/// The deepest expression tree accepted (parentheses, `NOT`s, signs and arithmetic each add a
/// level; a chain of `AND`s or `OR`s is one level).
pub(super) const MAX_DEPTH: usize = 64;

/// A message header a selector may name, or a user header.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ident {
    Priority,
    Timestamp,
    DeliveryMode,
    Type,
    CorrelationId,
    MessageId,
    Header(String),
}

impl Ident {
    fn from_name(name: String) -> Ident {
        match name.as_str() {
            "JMSPriority" => Ident::Priority,
            "JMSTimestamp" => Ident::Timestamp,
            "JMSDeliveryMode" => Ident::DeliveryMode,
            "JMSType" => Ident::Type,
            "JMSCorrelationID" => Ident::CorrelationId,
            "JMSMessageID" => Ident::MessageId,
            _ => Ident::Header(name),
        }
    }

    fn shape(&self) -> Shape {
        match self {
            Ident::Priority | Ident::Timestamp => Shape::Number,
            Ident::DeliveryMode | Ident::Type | Ident::CorrelationId | Ident::MessageId => {
                Shape::String
            }
            Ident::Header(_) => Shape::Any,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Literal {
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    Lit(Literal),
    Ident(Ident),
    Neg(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Between {
        value: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    In {
        value: Box<Expr>,
        list: Vec<String>,
        negated: bool,
    },
    Like {
        value: Box<Expr>,
        pattern: LikePattern,
        negated: bool,
    },
    IsNull {
        value: Box<Expr>,
        negated: bool,
    },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// What an expression can evaluate to, as far as the parser can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Condition,
    Number,
    String,
    /// A user header: a string that may stand for a number or a boolean.
    Any,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Condition => "a condition",
            Shape::Number => "a number",
            Shape::String => "a string",
            Shape::Any => "a value",
        }
    }
}

fn shape(e: &Expr) -> Shape {
    match e {
        Expr::Lit(Literal::Bool(_)) => Shape::Condition,
        Expr::Lit(Literal::Long(_) | Literal::Double(_)) => Shape::Number,
        Expr::Lit(Literal::Str(_)) => Shape::String,
        Expr::Ident(i) => i.shape(),
        Expr::Neg(_) | Expr::Arith(..) => Shape::Number,
        Expr::Cmp(..)
        | Expr::Between { .. }
        | Expr::In { .. }
        | Expr::Like { .. }
        | Expr::IsNull { .. }
        | Expr::Not(_)
        | Expr::And(_)
        | Expr::Or(_) => Shape::Condition,
    }
}

pub(super) fn parse(tokens: Vec<Spanned>) -> Result<Expr, SelectorError> {
    let mut p = Parser {
        tokens,
        at: 0,
        depth: 0,
    };
    let pos = p.pos();
    let e = p.or()?;
    if p.peek() != &Tok::End {
        return Err(p.unexpected("AND, OR, a comparison or the end of the selector"));
    }
    expect_condition(&e, pos)?;
    Ok(e)
}

fn expect_condition(e: &Expr, pos: usize) -> Result<(), SelectorError> {
    match shape(e) {
        Shape::Condition | Shape::Any => Ok(()),
        other => Err(SelectorError::new(pos, "a condition", other.name())),
    }
}

fn expect_number(e: &Expr, pos: usize, what: &str) -> Result<(), SelectorError> {
    match shape(e) {
        Shape::Number | Shape::Any => Ok(()),
        other => Err(SelectorError::new(
            pos,
            &format!("a number ({what} works on numbers)"),
            other.name(),
        )),
    }
}

struct Parser {
    tokens: Vec<Spanned>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.at.min(self.tokens.len() - 1)].0
    }

    fn pos(&self) -> usize {
        self.tokens[self.at.min(self.tokens.len() - 1)].1
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == t {
            self.next();
            true
        } else {
            false
        }
    }

    fn unexpected(&self, expected: &str) -> SelectorError {
        SelectorError::new(self.pos(), expected, &self.peek().describe())
    }

    fn expect(&mut self, t: &Tok, expected: &str) -> Result<(), SelectorError> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    /// Enters one level of nesting, refusing past [`MAX_DEPTH`].
    fn deeper(&mut self) -> Result<(), SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SelectorError::new(
                self.pos(),
                &format!("an expression at most {MAX_DEPTH} levels deep"),
                "a deeper one",
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, SelectorError> {
        let pos = self.pos();
        let first = self.and()?;
        if self.peek() != &Tok::Kw(Kw::Or) {
            return Ok(first);
        }
        expect_condition(&first, pos)?;
        let mut terms = vec![first];
        while self.eat(&Tok::Kw(Kw::Or)) {
            let pos = self.pos();
            let e = self.and()?;
            expect_condition(&e, pos)?;
            terms.push(e);
        }
        Ok(Expr::Or(terms))
    }

    fn and(&mut self) -> Result<Expr, SelectorError> {
        let pos = self.pos();
        let first = self.not()?;
        if self.peek() != &Tok::Kw(Kw::And) {
            return Ok(first);
        }
        expect_condition(&first, pos)?;
        let mut terms = vec![first];
        while self.eat(&Tok::Kw(Kw::And)) {
            let pos = self.pos();
            let e = self.not()?;
            expect_condition(&e, pos)?;
            terms.push(e);
        }
        Ok(Expr::And(terms))
    }

    fn not(&mut self) -> Result<Expr, SelectorError> {
        if self.eat(&Tok::Kw(Kw::Not)) {
            self.deeper()?;
            let pos = self.pos();
            let e = self.not()?;
            expect_condition(&e, pos)?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, SelectorError> {
        let pos = self.pos();
        let left = self.additive()?;
        let op = match self.peek() {
            Tok::Eq => Some(CmpOp::Eq),
            Tok::Ne => Some(CmpOp::Ne),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            let symbol = self.next().describe();
            let rpos = self.pos();
            let right = self.additive()?;
            if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                expect_number(&left, pos, &symbol)?;
                expect_number(&right, rpos, &symbol)?;
            }
            return Ok(Expr::Cmp(op, Box::new(left), Box::new(right)));
        }
        if self.eat(&Tok::Kw(Kw::Is)) {
            let negated = self.eat(&Tok::Kw(Kw::Not));
            self.expect(&Tok::Kw(Kw::Null), "NULL (IS [NOT] NULL)")?;
            return Ok(Expr::IsNull {
                value: Box::new(left),
                negated,
            });
        }
        let negated = self.eat(&Tok::Kw(Kw::Not));
        match self.peek() {
            Tok::Kw(Kw::Between) => {
                self.next();
                expect_number(&left, pos, "BETWEEN")?;
                let lpos = self.pos();
                let low = self.additive()?;
                expect_number(&low, lpos, "BETWEEN")?;
                self.expect(&Tok::Kw(Kw::And), "AND (BETWEEN low AND high)")?;
                let hpos = self.pos();
                let high = self.additive()?;
                expect_number(&high, hpos, "BETWEEN")?;
                Ok(Expr::Between {
                    value: Box::new(left),
                    low: Box::new(low),
                    high: Box::new(high),
                    negated,
                })
            }
            Tok::Kw(Kw::In) => {
                self.next();
                self.expect(&Tok::LParen, "'(' opening the list of IN")?;
                let mut list = Vec::new();
                loop {
                    let Tok::Str(s) = self.peek().clone() else {
                        return Err(self.unexpected("a string (IN lists hold strings)"));
                    };
                    self.next();
                    list.push(s);
                    if self.eat(&Tok::RParen) {
                        break;
                    }
                    self.expect(&Tok::Comma, "',' or ')' in the list of IN")?;
                }
                Ok(Expr::In {
                    value: Box::new(left),
                    list,
                    negated,
                })
            }
            Tok::Kw(Kw::Like) => {
                self.next();
                let ppos = self.pos();
                let Tok::Str(pattern) = self.peek().clone() else {
                    return Err(self.unexpected("a string pattern after LIKE"));
                };
                self.next();
                let escape = if self.eat(&Tok::Kw(Kw::Escape)) {
                    let epos = self.pos();
                    match self.peek().clone() {
                        Tok::Str(e) if e.chars().count() == 1 => {
                            self.next();
                            e.chars().next()
                        }
                        Tok::Str(e) => {
                            return Err(SelectorError::new(
                                epos,
                                "an ESCAPE string of exactly one character",
                                &Tok::Str(e).describe(),
                            ))
                        }
                        _ => return Err(self.unexpected("a one-character string after ESCAPE")),
                    }
                } else {
                    None
                };
                let pattern = LikePattern::new(&pattern, escape).map_err(|()| {
                    SelectorError::new(
                        ppos,
                        "a character after the ESCAPE character",
                        "the end of the pattern",
                    )
                })?;
                Ok(Expr::Like {
                    value: Box::new(left),
                    pattern,
                    negated,
                })
            }
            _ if negated => Err(self.unexpected("BETWEEN, IN or LIKE after NOT")),
            _ => Ok(left),
        }
    }

    fn additive(&mut self) -> Result<Expr, SelectorError> {
        let pos = self.pos();
        let mut left = self.multiplicative()?;
        let entered = self.depth;
        loop {
            let op = match self.peek() {
                Tok::Plus => ArithOp::Add,
                Tok::Minus => ArithOp::Sub,
                _ => break,
            };
            let symbol = self.next().describe();
            expect_number(&left, pos, &symbol)?;
            let rpos = self.pos();
            let right = self.multiplicative()?;
            expect_number(&right, rpos, &symbol)?;
            self.deeper()?;
            left = Expr::Arith(op, Box::new(left), Box::new(right));
        }
        self.depth = entered;
        Ok(left)
    }

    fn multiplicative(&mut self) -> Result<Expr, SelectorError> {
        let pos = self.pos();
        let mut left = self.unary()?;
        let entered = self.depth;
        loop {
            let op = match self.peek() {
                Tok::Star => ArithOp::Mul,
                Tok::Slash => ArithOp::Div,
                _ => break,
            };
            let symbol = self.next().describe();
            expect_number(&left, pos, &symbol)?;
            let rpos = self.pos();
            let right = self.unary()?;
            expect_number(&right, rpos, &symbol)?;
            self.deeper()?;
            left = Expr::Arith(op, Box::new(left), Box::new(right));
        }
        self.depth = entered;
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, SelectorError> {
        let negative = match self.peek() {
            Tok::Minus => true,
            Tok::Plus => false,
            _ => return self.primary(),
        };
        let symbol = self.next().describe();
        // `-9223372036854775808` is a literal, not the negation of one out of range.
        if negative {
            if let Tok::Int(m) = *self.peek() {
                self.next();
                let v = if m == 1 << 63 { i64::MIN } else { -(m as i64) };
                return Ok(Expr::Lit(Literal::Long(v)));
            }
        }
        self.deeper()?;
        let pos = self.pos();
        let e = self.unary()?;
        expect_number(&e, pos, &format!("unary {symbol}"))?;
        self.depth -= 1;
        Ok(if negative { Expr::Neg(Box::new(e)) } else { e })
    }

    fn primary(&mut self) -> Result<Expr, SelectorError> {
        let pos = self.pos();
        let lit = match self.peek().clone() {
            Tok::Int(m) if m > i64::MAX as u64 => {
                return Err(SelectorError::new(
                    pos,
                    "an integer from -9223372036854775808 to 9223372036854775807",
                    "a larger one",
                ))
            }
            Tok::Int(m) => Expr::Lit(Literal::Long(m as i64)),
            Tok::Float(f) => Expr::Lit(Literal::Double(f)),
            Tok::Str(s) => Expr::Lit(Literal::Str(s)),
            Tok::Kw(Kw::True) => Expr::Lit(Literal::Bool(true)),
            Tok::Kw(Kw::False) => Expr::Lit(Literal::Bool(false)),
            Tok::Ident(name) => Expr::Ident(Ident::from_name(name)),
            Tok::LParen => {
                self.next();
                self.deeper()?;
                let e = self.or()?;
                self.expect(&Tok::RParen, "')' or an operator")?;
                self.depth -= 1;
                return Ok(e);
            }
            _ => return Err(self.unexpected("an identifier, a literal, NOT or '('")),
        };
        self.next();
        Ok(lit)
    }
}
