//! A frame's headers in one piece of text: every name and value back to back in one `String`,
//! with the spans that cut it into pairs.
//!
//! Decoding a frame costs two allocations for its headers however many it has (the text and
//! the spans), not two per header, and a header the server never reads is copied once, into
//! the text, and never again. Invariant: the text is exactly the pairs' names and values
//! concatenated in order, so two `Headers` are equal exactly when they hold the same pairs in
//! the same order.

use std::fmt;

/// A frame's headers, in order, repeats kept.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// For each header: where its name ends and its value begins, and where its value ends
    /// (its name begins where the previous value ended).
    ends: Vec<(u32, u32)>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Headers with room for `headers` pairs of `text` bytes in all.
    pub fn with_capacity(headers: usize, text: usize) -> Headers {
        Headers {
            text: String::with_capacity(text),
            ends: Vec::with_capacity(headers),
        }
    }

    /// Appends a header.
    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len() as u32;
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len() as u32));
    }

    /// Appends a header written in place: `name` appends the name to the text, then `value`
    /// the value (the decoder unescapes straight into the text). On an error nothing is kept.
    pub(super) fn push_parts<E>(
        &mut self,
        name: impl FnOnce(&mut String) -> Result<(), E>,
        value: impl FnOnce(&mut String) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.text.len();
        let written = name(&mut self.text).and_then(|()| {
            let name_end = self.text.len();
            value(&mut self.text).map(|()| name_end)
        });
        match written {
            Ok(name_end) => {
                self.ends.push((name_end as u32, self.text.len() as u32));
                Ok(())
            }
            Err(e) => {
                self.text.truncate(start);
                Err(e)
            }
        }
    }

    /// The last header pushed.
    pub fn last(&self) -> Option<(&str, &str)> {
        let n = self.ends.len();
        let &(name_end, value_end) = self.ends.last()?;
        let start = if n > 1 { self.ends[n - 2].1 } else { 0 };
        Some((
            &self.text[start as usize..name_end as usize],
            &self.text[name_end as usize..value_end as usize],
        ))
    }

    /// Removes every header, keeping the room they took.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The headers, in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let pair = (&self.text[start..name_end], &self.text[name_end..value_end]);
            start = value_end;
            pair
        })
    }

    /// The value of the first header named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Keeps only the headers `keep` accepts, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        if self.iter().all(|(k, v)| keep(k, v)) {
            return;
        }
        let mut kept = Headers::with_capacity(self.len(), self.text.len());
        for (k, v) in self.iter() {
            if keep(k, v) {
                kept.push(k, v);
            }
        }
        *self = kept;
    }

    /// The headers as owned pairs.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Headers {
        let mut headers = Headers::new();
        for (k, v) in pairs {
            headers.push(k.as_ref(), v.as_ref());
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_come_back_in_order_with_repeats_and_empty_parts() {
        let mut h = Headers::new();
        assert_eq!(h.last(), None);
        h.push("a", "1");
        assert_eq!(h.last(), Some(("a", "1")));
        h.push("", "empty name");
        assert_eq!(h.last(), Some(("", "empty name")));
        h.push("a", "2");
        h.push("b", "");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("a", "1"), ("", "empty name"), ("a", "2"), ("b", "")]
        );
        assert_eq!(h.get("a"), Some("1"), "the first wins");
        assert_eq!(h.get("b"), Some(""));
        assert_eq!(h.get("c"), None);
        assert_eq!(h.last(), Some(("b", "")));
        assert_eq!(h.len(), 4);
        h.retain(|k, _| k != "a");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("", "empty name"), ("b", "")]
        );
        let same: Headers = [("", "empty name"), ("b", "")].into_iter().collect();
        assert_eq!(h, same);
        let other: Headers = [("", "empty nam"), ("eb", "")].into_iter().collect();
        assert_ne!(h, other, "the same text cut elsewhere is other headers");
    }

    #[test]
    fn a_failed_part_leaves_no_trace() {
        let mut h: Headers = [("a", "1")].into_iter().collect();
        let failed = h.push_parts(
            |t| {
                t.push_str("half");
                Ok(())
            },
            |_| Err("bad value"),
        );
        assert_eq!(failed, Err("bad value"));
        assert_eq!(h, [("a", "1")].into_iter().collect());
        let push = |c: char| {
            move |t: &mut String| -> Result<(), ()> {
                t.push(c);
                Ok(())
            }
        };
        h.push_parts(push('b'), push('2')).unwrap();
        assert_eq!(h.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
    }
}
