//! Request body framing as pure functions: a strict, incremental `Transfer-Encoding: chunked`
//! decoder. The listener feeds it the bytes it reads; it never reads past the end of the body, so
//! whatever follows the body is left to the caller and is never part of the request.

/// Most hex digits a chunk size may have: 16 digits always fit in a `u64`, so any longer size
/// is refused as malformed before it can overflow.
pub const MAX_CHUNK_SIZE_DIGITS: usize = 16;

/// Why a chunked body was refused. Each is the client's fault; the text goes to the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkFault {
    #[error("chunk size is not plain hexadecimal (no sign, prefix or spaces)")]
    SizeNotHex,
    #[error("chunk size has more than {MAX_CHUNK_SIZE_DIGITS} digits")]
    SizeTooLong,
    #[error("chunk extensions are not accepted")]
    Extension,
    #[error("chunk line not ended by CRLF")]
    LineEnding,
    #[error("chunk data longer than its size")]
    DataOverrun,
    #[error("trailer fields are not accepted")]
    Trailer,
}

/// A chunked body the gateway will not read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// The chunks announce more than the body limit: 413, as for a declared length.
    TooLarge,
    /// Broken framing: 400.
    Malformed(ChunkFault),
}

/// What the decoder needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input was consumed; the body is not complete yet.
    NeedMore,
    /// The body ended after `consumed` bytes of this input; the rest is not part of it.
    Done { consumed: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size {
        value: u64,
        digits: usize,
    },
    /// After the CR that ends a size line.
    SizeLf {
        value: u64,
    },
    /// Inside chunk data.
    Data {
        remaining: u64,
    },
    /// After chunk data: CR expected.
    DataCr,
    DataLf,
    /// After the last (zero) chunk: the empty line that ends the (empty) trailer section.
    EndCr,
    EndLf,
    Finished,
}

/// Decodes `Transfer-Encoding: chunked` as RFC 9112 §7.1 writes it, narrowed to what a well-behaved
/// client sends: hex sizes without extensions, CRLF line endings, no trailer fields. The decoded
/// body is bounded by `max_body` while it is read.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    max_body: u64,
    body_len: u64,
}

impl ChunkedDecoder {
    pub fn new(max_body: usize) -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            max_body: max_body as u64,
            body_len: 0,
        }
    }

    /// Consumes `input`, appending decoded data to `body`, and stops at the end of the body.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<Progress, ChunkedError> {
        let malformed = |fault| Err(ChunkedError::Malformed(fault));
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            self.state = match self.state {
                State::Size { value, digits } => match byte {
                    b'\r' if digits > 0 => State::SizeLf { value },
                    b';' if digits > 0 => return malformed(ChunkFault::Extension),
                    b'\n' if digits > 0 => return malformed(ChunkFault::LineEnding),
                    _ => {
                        let Some(digit) = hex_value(byte) else {
                            return malformed(ChunkFault::SizeNotHex);
                        };
                        if digits == MAX_CHUNK_SIZE_DIGITS {
                            return malformed(ChunkFault::SizeTooLong);
                        }
                        State::Size {
                            value: value << 4 | u64::from(digit),
                            digits: digits + 1,
                        }
                    }
                },
                State::SizeLf { value } => {
                    if byte != b'\n' {
                        return malformed(ChunkFault::LineEnding);
                    }
                    if value == 0 {
                        State::EndCr
                    } else if value > self.max_body - self.body_len {
                        return Err(ChunkedError::TooLarge);
                    } else {
                        State::Data { remaining: value }
                    }
                }
                State::Data { remaining } => {
                    let available = (input.len() - at) as u64;
                    let take = remaining.min(available);
                    // `take` is at most the input's length, so it fits in usize.
                    let end = at + take as usize;
                    body.extend_from_slice(&input[at..end]);
                    self.body_len += take;
                    at = end;
                    self.state = if take == remaining {
                        State::DataCr
                    } else {
                        State::Data {
                            remaining: remaining - take,
                        }
                    };
                    continue;
                }
                State::DataCr => match byte {
                    b'\r' => State::DataLf,
                    b'\n' => return malformed(ChunkFault::LineEnding),
                    _ => return malformed(ChunkFault::DataOverrun),
                },
                State::DataLf => {
                    if byte != b'\n' {
                        return malformed(ChunkFault::LineEnding);
                    }
                    State::Size {
                        value: 0,
                        digits: 0,
                    }
                }
                State::EndCr => match byte {
                    b'\r' => State::EndLf,
                    b'\n' => return malformed(ChunkFault::LineEnding),
                    _ => return malformed(ChunkFault::Trailer),
                },
                State::EndLf => {
                    if byte != b'\n' {
                        return malformed(ChunkFault::LineEnding);
                    }
                    State::Finished
                }
                State::Finished => break,
            };
            at += 1;
            if self.state == State::Finished {
                break;
            }
        }
        Ok(if self.state == State::Finished {
            Progress::Done { consumed: at }
        } else {
            Progress::NeedMore
        })
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the body and how many bytes it took.
    fn decode(input: &[u8], step: usize, max: usize) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut decoder = ChunkedDecoder::new(max);
        let mut body = Vec::new();
        let mut offset = 0;
        for piece in input.chunks(step) {
            match decoder.feed(piece, &mut body)? {
                Progress::Done { consumed } => return Ok((body, offset + consumed)),
                Progress::NeedMore => offset += piece.len(),
            }
        }
        Ok((body, usize::MAX))
    }

    #[test]
    fn decodes_in_any_split_and_stops_at_the_end() {
        let input =
            b"5\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nPOST / HTTP/1.1\r\n";
        let end = input.len() - "POST / HTTP/1.1\r\n".len();
        for step in 1..=input.len() {
            let (body, consumed) = decode(input, step, 1024).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(
                consumed, end,
                "step {step}: stops right after the last CRLF"
            );
        }
    }

    #[test]
    fn incomplete_input_needs_more() {
        for input in [
            &b"5\r\nhel"[..],
            b"5\r\nhello\r\n",
            b"0\r\n",
            b"0\r\n\r",
            b"",
        ] {
            assert_eq!(decode(input, 3, 1024).unwrap().1, usize::MAX, "{input:?}");
        }
    }

    #[test]
    fn malformed_sizes() {
        let cases: [(&[u8], ChunkFault); 9] = [
            (b"-5\r\nhello\r\n0\r\n\r\n", ChunkFault::SizeNotHex),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkFault::SizeNotHex),
            (b"+5\r\nhello\r\n0\r\n\r\n", ChunkFault::SizeNotHex),
            (b" 5\r\nhello\r\n0\r\n\r\n", ChunkFault::SizeNotHex),
            (b"5 \r\nhello\r\n0\r\n\r\n", ChunkFault::SizeNotHex),
            (b"\r\nhello\r\n0\r\n\r\n", ChunkFault::SizeNotHex),
            (b"5;name=value\r\nhello\r\n0\r\n\r\n", ChunkFault::Extension),
            (b"10000000000000000\r\nx\r\n", ChunkFault::SizeTooLong),
            (b"ffffffffffffffffffff\r\nx\r\n", ChunkFault::SizeTooLong),
        ];
        for (input, fault) in cases {
            assert_eq!(
                decode(input, 1, 65_536),
                Err(ChunkedError::Malformed(fault)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn line_endings_must_be_crlf() {
        for input in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\n\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\rhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                decode(input, 2, 1024),
                Err(ChunkedError::Malformed(ChunkFault::LineEnding)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn data_longer_than_its_size_and_trailers() {
        assert_eq!(
            decode(b"3\r\nhello\r\n0\r\n\r\n", 4, 1024),
            Err(ChunkedError::Malformed(ChunkFault::DataOverrun))
        );
        assert_eq!(
            decode(b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", 4, 1024),
            Err(ChunkedError::Malformed(ChunkFault::Trailer))
        );
    }

    #[test]
    fn the_limit_is_enforced_from_the_announced_sizes() {
        assert_eq!(
            decode(b"5\r\nhello\r\n0\r\n\r\n", 1, 5).unwrap().0,
            b"hello"
        );
        assert_eq!(
            decode(b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n", 1, 5),
            Err(ChunkedError::TooLarge)
        );
        // Refused as soon as the size line is read, before any data.
        let mut decoder = ChunkedDecoder::new(65_536);
        let mut body = Vec::new();
        assert_eq!(
            decoder.feed(b"ffffffffffffffff\r\n", &mut body),
            Err(ChunkedError::TooLarge)
        );
        assert!(body.is_empty());
    }

    #[test]
    fn leading_zeros_are_plain_hex() {
        assert_eq!(
            decode(b"0005\r\nhello\r\n000\r\n\r\n", 1, 1024).unwrap().0,
            b"hello"
        );
    }
}
