//! Journal record framing and segment scanning (pure: bytes in, records out).
//!
//! A frame is `u32 len | u32 crc32c | u64 index | payload`, where `len` counts the index and
//! the payload and the CRC covers the same bytes. Segments are preallocated, so the data ends
//! at the first frame whose length field is zero. Scanning never panics on any input: it
//! reports where the valid data ends and why.

use bytes::BufMut;

/// Bytes before the payload: length, CRC, index.
pub const FRAME_HEADER: usize = 16;

/// Appends one frame.
pub fn put_frame(index: u64, payload: &[u8], dst: &mut impl BufMut) {
    let mut crc = crc32c::crc32c(&index.to_be_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    dst.put_u32((8 + payload.len()) as u32);
    dst.put_u32(crc);
    dst.put_u64(index);
    dst.put_slice(payload);
}

pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER + payload_len
}

/// One record found by `scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub index: u64,
    /// Offset of the frame in the segment.
    pub offset: usize,
    /// Payload position and length.
    pub payload: usize,
    pub payload_len: usize,
}

/// Why the valid data of a segment ends where it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A zero length field or the end of the file: nothing more was written.
    Clean,
    /// The frame at `offset` is damaged (torn write or corruption).
    Damaged { offset: usize, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Found>,
    /// Offset just past the last valid frame.
    pub end: usize,
    pub ended: End,
}

/// Checks one frame at `offset`; `Ok(None)` at a clean end.
fn check(
    bytes: &[u8],
    offset: usize,
    expected: u64,
    max_frame: usize,
) -> Result<Option<Found>, String> {
    let rest = &bytes[offset..];
    if rest.len() < 4 {
        return if rest.iter().all(|b| *b == 0) {
            Ok(None)
        } else {
            Err("a partial frame header".into())
        };
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len == 0 {
        return Ok(None);
    }
    if len < 8 || len > max_frame {
        return Err(format!("impossible frame length {len}"));
    }
    if rest.len() < 8 + len {
        return Err(format!(
            "a frame of {len} bytes cut short at {} bytes",
            rest.len().saturating_sub(8)
        ));
    }
    let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let body = &rest[8..8 + len];
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let index = u64::from_be_bytes(
        body[..8]
            .try_into()
            .map_err(|_| "short index".to_string())?,
    );
    if index != expected {
        return Err(format!(
            "record index {index} where {expected} was expected"
        ));
    }
    Ok(Some(Found {
        index,
        offset,
        payload: offset + FRAME_HEADER,
        payload_len: len - 8,
    }))
}

/// Reads every valid frame of a segment whose first record is `first`.
pub fn scan(bytes: &[u8], first: u64, max_frame: usize) -> Scan {
    let mut records = Vec::new();
    let mut offset = 0;
    let mut expected = first;
    loop {
        match check(bytes, offset, expected, max_frame) {
            Ok(Some(f)) => {
                offset = f.payload + f.payload_len;
                expected += 1;
                records.push(f);
            }
            Ok(None) => {
                return Scan {
                    records,
                    end: offset,
                    ended: End::Clean,
                }
            }
            Err(reason) => {
                return Scan {
                    records,
                    end: offset,
                    ended: End::Damaged { offset, reason },
                }
            }
        }
    }
}

/// After damage at `offset`, is there a valid frame with index `next` further on? If so the
/// damage is in the middle of the data (corruption), not a torn tail.
pub fn valid_frame_after(
    bytes: &[u8],
    damaged_at: usize,
    next: u64,
    max_frame: usize,
) -> Option<usize> {
    let rest = bytes.get(damaged_at..)?;
    if rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let skip = damaged_at + 8 + len;
        if (8..=max_frame).contains(&len) && skip < bytes.len() {
            if let Ok(Some(_)) = check(bytes, skip, next + 1, max_frame) {
                return Some(skip);
            }
        }
    }
    // The length itself may be the damaged part: look for the next frame's signature.
    let want = (next + 1).to_be_bytes();
    let mut from = damaged_at + 1;
    while let Some(pos) = bytes
        .get(from..)
        .and_then(|r| r.windows(8).position(|w| w == want))
    {
        let candidate = (from + pos).checked_sub(8)?;
        if candidate > damaged_at {
            if let Ok(Some(_)) = check(bytes, candidate, next + 1, max_frame) {
                return Some(candidate);
            }
        }
        from += pos + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(payloads: &[&[u8]], first: u64, pad: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            put_frame(first + i as u64, p, &mut v);
        }
        v.resize(v.len() + pad, 0);
        v
    }

    #[test]
    fn scans_valid_frames_up_to_the_zero_padding() {
        let s = segment(&[b"a", b"bb", b""], 10, 100);
        let r = scan(&s, 10, 1 << 20);
        assert_eq!(r.ended, End::Clean);
        assert_eq!(r.records.len(), 3);
        assert_eq!(r.records[1].index, 11);
        assert_eq!(&s[r.records[1].payload..r.records[1].payload + 2], b"bb");
        assert_eq!(r.end, 3 * FRAME_HEADER + 3);
    }

    #[test]
    fn a_tail_cut_at_every_byte_is_damaged_or_clean_never_a_panic() {
        let s = segment(&[b"first", b"second record"], 1, 0);
        let whole = s.len();
        let last_start = FRAME_HEADER + 5;
        for cut in 0..whole {
            let mut torn = s[..cut].to_vec();
            torn.resize(whole + 32, 0);
            let r = scan(&torn, 1, 1 << 20);
            let complete = if cut >= whole {
                2
            } else if cut >= last_start {
                1
            } else {
                0
            };
            assert_eq!(r.records.len(), complete, "cut at {cut}");
            if cut > last_start && cut < whole {
                // A partial last frame is damage at its start.
                assert!(
                    matches!(r.ended, End::Damaged { offset, .. } if offset == last_start)
                        || r.ended == End::Clean,
                    "cut at {cut}: {:?}",
                    r.ended
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_found_and_located_as_middle_damage() {
        let s = segment(&[b"one", b"two", b"three"], 1, 64);
        let second = FRAME_HEADER + 3;
        let mut bad = s.clone();
        bad[second + FRAME_HEADER + 1] ^= 0x40;
        let r = scan(&bad, 1, 1 << 20);
        assert_eq!(r.records.len(), 1);
        assert_eq!(
            r.ended,
            End::Damaged {
                offset: second,
                reason: "checksum mismatch".into()
            }
        );
        assert!(
            valid_frame_after(&bad, second, 2, 1 << 20).is_some(),
            "the third record proves it is not a tail"
        );
        let mut len_hit = s.clone();
        len_hit[second + 2] ^= 0x10;
        let r = scan(&len_hit, 1, 1 << 20);
        assert!(matches!(r.ended, End::Damaged { offset, .. } if offset == second));
        assert!(valid_frame_after(&len_hit, second, 2, 1 << 20).is_some());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x1234_5678_9abc_def0;
        for n in 0..3000 {
            let mut v = vec![0u8; n % 200];
            for b in &mut v {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let r = scan(&v, 1, 1 << 16);
            if let End::Damaged { offset, .. } = r.ended {
                let _ = valid_frame_after(&v, offset, 1, 1 << 16);
            }
        }
    }
}
