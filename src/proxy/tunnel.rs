//! WebSocket framing as far as closing a tunnel needs it (RFC 6455 §5.2): where frames
//! end in each direction, so that a close frame ecluse writes never lands inside one of
//! the origin's (the client would read garbage), and the close frame itself.
//!
//! Nothing else of the protocol is interpreted: payloads pass untouched and unread.

/// Follows frame boundaries in one direction of a byte stream.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    /// Bytes of the current frame's header seen so far (at most 14).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The stream starts with an HTTP response head to skip (`\r\n\r\n`-terminated).
    skip_http_head: bool,
    /// The last bytes of the HTTP head seen, to find its end across chunks.
    tail: u32,
}

impl Frames {
    /// Frames from the first byte (client → origin, after the request head).
    pub fn new() -> Frames {
        Frames::default()
    }

    /// Frames after an HTTP head still to be written (origin → client: the `101` first).
    pub fn after_http_head() -> Frames {
        Frames {
            skip_http_head: true,
            ..Frames::default()
        }
    }

    /// Between two frames (nothing of a frame is pending).
    pub fn at_boundary(&self) -> bool {
        !self.skip_http_head && self.head_len == 0 && self.payload_left == 0
    }

    /// How many of `buf`'s bytes may pass before the next boundary: all of them when the
    /// current frame (or the HTTP head) doesn't end inside `buf`. 0 at a boundary.
    pub fn until_boundary(&self, buf: &[u8]) -> usize {
        if self.at_boundary() {
            return 0;
        }
        let mut probe = self.clone();
        for n in 1..=buf.len() {
            probe.feed(&buf[n - 1..n]);
            if probe.at_boundary() {
                return n;
            }
        }
        buf.len()
    }

    /// Account for `buf`, which passed.
    pub fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.skip_http_head {
                let b = buf[0];
                buf = &buf[1..];
                self.tail = (self.tail << 8) | u32::from(b);
                if self.tail == u32::from_be_bytes(*b"\r\n\r\n") {
                    self.skip_http_head = false;
                }
                continue;
            }
            if self.payload_left > 0 {
                let n = (buf.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                buf = &buf[n as usize..];
                continue;
            }
            self.head[self.head_len] = buf[0];
            self.head_len += 1;
            buf = &buf[1..];
            if let Some(len) = self.header_complete() {
                self.head_len = 0;
                self.payload_left = len;
            }
        }
    }

    /// The payload length once the header is whole.
    fn header_complete(&self) -> Option<u64> {
        let h = &self.head[..self.head_len];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let (ext, len) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if h.len() < need {
            return None;
        }
        Some(len.unwrap_or_else(|| {
            h[2..2 + ext]
                .iter()
                .fold(0u64, |a, b| (a << 8) | u64::from(*b))
        }))
    }
}

/// Close codes ecluse sends (RFC 6455 §7.4.1).
pub const TRY_AGAIN_LATER: u16 = 1013;
pub const GOING_AWAY: u16 = 1001;

/// A close frame with `code` and `reason` (at most 123 bytes, cut by the caller on a
/// character boundary), masked with `mask` when it goes to a server.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    let mut f = vec![0x88, payload.len() as u8];
    if let Some(m) = mask {
        f[1] |= 0x80;
        f.extend_from_slice(&m);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    f.extend_from_slice(&payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn boundaries_of_every_length_form_in_any_chunking() {
        for masked in [false, true] {
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for len in [0, 5, 125, 126, 300, 65535, 70000] {
                stream.extend(frame(len, masked));
                ends.push(stream.len());
            }
            for chunk in [1, 3, 7, 1000, 100_000] {
                let mut f = Frames::new();
                let mut pos = 0;
                for c in stream.chunks(chunk) {
                    let n = f.until_boundary(c);
                    if n > 0 && n < c.len() {
                        assert!(ends.contains(&(pos + n)), "chunk {chunk}: {}", pos + n);
                    }
                    f.feed(c);
                    pos += c.len();
                    assert_eq!(
                        f.at_boundary(),
                        ends.contains(&pos),
                        "chunk {chunk} at {pos}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_http_head_is_skipped_first() {
        let mut f = Frames::after_http_head();
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(f.until_boundary(head), head.len());
        f.feed(&head[..10]);
        assert!(!f.at_boundary());
        f.feed(&head[10..]);
        assert!(f.at_boundary());
        let fr = frame(3, false);
        f.feed(&fr[..2]);
        assert_eq!(f.until_boundary(&[7, 7, 7, 0x82]), 3);
    }

    #[test]
    fn close_frames_carry_code_and_reason_masked_or_not() {
        let f = close_frame(TRY_AGAIN_LATER, "revenez", None);
        assert_eq!(&f[..4], &[0x88, 9, 0x03, 0xF5]);
        assert_eq!(&f[4..], b"revenez");
        let m = close_frame(GOING_AWAY, "", Some([9, 9, 9, 9]));
        assert_eq!(m[1], 0x80 | 2);
        assert_eq!([m[6] ^ 9, m[7] ^ 9], 1001u16.to_be_bytes());
        let mut t = Frames::new();
        t.feed(&m);
        assert!(t.at_boundary());
    }
}
