//! Selector text → tokens, each with the (1-based) character position where it starts.

use super::SelectorError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kw {
    And,
    Or,
    Not,
    Between,
    In,
    Like,
    Escape,
    Is,
    Null,
    True,
    False,
}

impl Kw {
    fn from_word(w: &str) -> Option<Kw> {
        const WORDS: [(&str, Kw); 11] = [
            ("AND", Kw::And),
            ("OR", Kw::Or),
            ("NOT", Kw::Not),
            ("BETWEEN", Kw::Between),
            ("IN", Kw::In),
            ("LIKE", Kw::Like),
            ("ESCAPE", Kw::Escape),
            ("IS", Kw::Is),
            ("NULL", Kw::Null),
            ("TRUE", Kw::True),
            ("FALSE", Kw::False),
        ];
        WORDS
            .iter()
            .find(|(word, _)| w.eq_ignore_ascii_case(word))
            .map(|(_, k)| *k)
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kw::And => "AND",
            Kw::Or => "OR",
            Kw::Not => "NOT",
            Kw::Between => "BETWEEN",
            Kw::In => "IN",
            Kw::Like => "LIKE",
            Kw::Escape => "ESCAPE",
            Kw::Is => "IS",
            Kw::Null => "NULL",
            Kw::True => "TRUE",
            Kw::False => "FALSE",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    Str(String),
    /// An exact numeric literal's magnitude: up to 2^63, so that `-9223372036854775808` (whose
    /// magnitude is one past `i64::MAX`) can be written; the parser checks the sign.
    Int(u64),
    Float(f64),
    Kw(Kw),
    LParen,
    RParen,
    Comma,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    End,
}

impl Tok {
    /// How an error message names what it found.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Ident(i) => format!("identifier {i}"),
            Tok::Str(s) => format!("string '{}'", s.replace('\'', "''")),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Kw(k) => k.name().to_string(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::Eq => "'='".into(),
            Tok::Ne => "'<>'".into(),
            Tok::Lt => "'<'".into(),
            Tok::Le => "'<='".into(),
            Tok::Gt => "'>'".into(),
            Tok::Ge => "'>='".into(),
            Tok::Plus => "'+'".into(),
            Tok::Minus => "'-'".into(),
            Tok::Star => "'*'".into(),
            Tok::Slash => "'/'".into(),
            Tok::End => "the end of the selector".into(),
        }
    }
}

/// A token and the character position (1-based) where it starts.
pub(super) type Spanned = (Tok, usize);

/// The largest magnitude an exact literal may have (that of `i64::MIN`).
const MAX_MAGNITUDE: u64 = 1 << 63;

pub(super) fn lex(text: &str) -> Result<Vec<Spanned>, SelectorError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let (tok, len) = match c {
            '\'' => string(&chars, i)?,
            '0'..='9' => number(&chars, i)?,
            '.' if chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => number(&chars, i)?,
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || **c == '_' || **c == '$')
                    .count();
                let word: String = chars[i..i + len].iter().collect();
                match Kw::from_word(&word) {
                    Some(k) => (Tok::Kw(k), len),
                    None => (Tok::Ident(word), len),
                }
            }
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            ',' => (Tok::Comma, 1),
            '=' => (Tok::Eq, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '*' => (Tok::Star, 1),
            '/' => (Tok::Slash, 1),
            '<' => match chars.get(i + 1) {
                Some('>') => (Tok::Ne, 2),
                Some('=') => (Tok::Le, 2),
                _ => (Tok::Lt, 1),
            },
            '>' => match chars.get(i + 1) {
                Some('=') => (Tok::Ge, 2),
                _ => (Tok::Gt, 1),
            },
            '!' if chars.get(i + 1) == Some(&'=') => {
                return Err(SelectorError::new(
                    pos,
                    "an operator ('<>' is SQL's not-equal)",
                    "'!='",
                ))
            }
            '"' => {
                return Err(SelectorError::new(
                    pos,
                    "a string in single quotes ('like this')",
                    "'\"'",
                ))
            }
            other => {
                return Err(SelectorError::new(
                    pos,
                    "an identifier, a literal, an operator or a parenthesis",
                    &format!("character {other:?}"),
                ))
            }
        };
        out.push((tok, pos));
        i += len;
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

/// A string literal starting at `start` (a `'`); `''` inside stands for one `'`.
fn string(chars: &[char], start: usize) -> Result<(Tok, usize), SelectorError> {
    let mut s = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => {
                return Err(SelectorError::new(
                    chars.len() + 1,
                    &format!(
                        "the ' closing the string that starts at character {}",
                        start + 1
                    ),
                    "the end of the selector",
                ))
            }
            Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                s.push('\'');
                i += 2;
            }
            Some('\'') => return Ok((Tok::Str(s), i + 1 - start)),
            Some(c) => {
                s.push(*c);
                i += 1;
            }
        }
    }
}

/// A numeric literal (Java syntax): decimal, `0x` hexadecimal or `0`-prefixed octal integers
/// with an optional `L`; decimals and exponents (`7.`, `.5`, `-57.9E2`) with an optional `F`
/// or `D` are approximate.
fn number(chars: &[char], start: usize) -> Result<(Tok, usize), SelectorError> {
    let pos = start + 1;
    let at = |i: usize| chars.get(i).copied();
    let ident_part =
        |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if at(start) == Some('0') && matches!(at(start + 1), Some('x' | 'X')) {
        let digits: String = chars[start + 2..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        let mut end = start + 2 + digits.len();
        if matches!(at(end), Some('l' | 'L')) {
            end += 1;
        }
        if digits.is_empty() || ident_part(at(end)) {
            return Err(SelectorError::new(
                pos,
                "a number",
                "a malformed hexadecimal number",
            ));
        }
        let v = u64::from_str_radix(&digits, 16)
            .ok()
            .filter(|v| *v < MAX_MAGNITUDE)
            .ok_or_else(|| out_of_range(pos))?;
        return Ok((Tok::Int(v), end - start));
    }
    let mut i = start;
    let digits = |i: &mut usize| {
        let from = *i;
        while at(*i).is_some_and(|c| c.is_ascii_digit()) {
            *i += 1;
        }
        *i - from
    };
    digits(&mut i);
    let mut approximate = false;
    if at(i) == Some('.') {
        approximate = true;
        i += 1;
        digits(&mut i);
    }
    if matches!(at(i), Some('e' | 'E')) {
        approximate = true;
        i += 1;
        if matches!(at(i), Some('+' | '-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return Err(SelectorError::new(
                i + 1,
                "the digits of an exponent",
                &describe_char(at(i)),
            ));
        }
    }
    let text: String = chars[start..i].iter().collect();
    let suffix = at(i);
    let (tok, end) = if !approximate && matches!(suffix, Some('l' | 'L')) {
        (int_literal(&text, pos)?, i + 1)
    } else if matches!(suffix, Some('f' | 'F' | 'd' | 'D')) {
        (float_literal(&text, pos)?, i + 1)
    } else if approximate {
        (float_literal(&text, pos)?, i)
    } else {
        (int_literal(&text, pos)?, i)
    };
    if ident_part(at(end)) {
        return Err(SelectorError::new(
            end + 1,
            "an operator or a space after a number",
            &describe_char(at(end)),
        ));
    }
    Ok((tok, end - start))
}

fn int_literal(text: &str, pos: usize) -> Result<Tok, SelectorError> {
    let (digits, radix) = if text.len() > 1 && text.starts_with('0') {
        (&text[1..], 8)
    } else {
        (text, 10)
    };
    let v = u64::from_str_radix(digits, radix).map_err(|_| {
        if radix == 8 {
            SelectorError::new(pos, "an octal number (a leading 0 means octal)", text)
        } else {
            out_of_range(pos)
        }
    })?;
    if v > MAX_MAGNITUDE {
        return Err(out_of_range(pos));
    }
    Ok(Tok::Int(v))
}

fn float_literal(text: &str, pos: usize) -> Result<Tok, SelectorError> {
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Tok::Float)
        .ok_or_else(|| SelectorError::new(pos, "a finite number", text))
}

fn out_of_range(pos: usize) -> SelectorError {
    SelectorError::new(
        pos,
        "an integer from -9223372036854775808 to 9223372036854775807",
        "a larger one",
    )
}

fn describe_char(c: Option<char>) -> String {
    match c {
        Some(c) => format!("character {c:?}"),
        None => "the end of the selector".into(),
    }
}
