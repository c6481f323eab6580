//! `LIKE` patterns: `_` stands for any one character, `%` for any run of characters (even
//! none); an `ESCAPE` character makes the character after it literal. Matching is on
//! characters (not bytes), case-sensitive, and linear-time backtracking over the last `%`, so
//! a hostile pattern costs at most (pattern length × value length) steps.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Char(char),
    One,
    Many,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LikePattern {
    parts: Vec<Part>,
}

impl LikePattern {
    /// Err when the pattern ends with the escape character (it escapes nothing).
    pub(super) fn new(pattern: &str, escape: Option<char>) -> Result<LikePattern, ()> {
        let mut parts = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let part = if Some(c) == escape {
                Part::Char(chars.next().ok_or(())?)
            } else if c == '_' {
                Part::One
            } else if c == '%' {
                // Runs of % mean what one does.
                if parts.last() == Some(&Part::Many) {
                    continue;
                }
                Part::Many
            } else {
                Part::Char(c)
            };
            parts.push(part);
        }
        Ok(LikePattern { parts })
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        let p = &self.parts;
        let s: Vec<char> = value.chars().collect();
        let (mut pi, mut si) = (0, 0);
        // The last % seen, and where in `s` it is now assumed to end.
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            match p.get(pi) {
                Some(Part::Many) => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                Some(Part::One) => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                Some(Part::Char(c)) if *c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            }
        }
        p[pi..].iter().all(|x| *x == Part::Many)
    }
}
