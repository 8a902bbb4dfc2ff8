//! The opaque strings the simulated Exchange hands out: ItemIds, FolderIds, ChangeKeys,
//! watermarks and subscription ids. They look like Exchange's (standard base64 with padding) and
//! carry what the simulator needs to recognise them again: a structured byte layout behind a fixed
//! prefix, so a foreign or mangled string is told apart from an unknown one
//! (`ErrorInvalidIdMalformed` versus `ErrorItemNotFound`).

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with mandatory padding; `None` for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        ALPHABET
            .iter()
            .position(|&a| a == c)
            .and_then(|p| u32::try_from(p).ok())
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (index, quad) in bytes.chunks(4).enumerate() {
        let last = index + 1 == quads;
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            let v = if i >= 4 - padding { 0 } else { value(c)? };
            n |= v << (18 - 6 * i);
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

/// Prefix of every ItemId (Exchange's start with `AAMkA`; ours decode to these bytes).
const ITEM_PREFIX: [u8; 4] = [0x00, 0x00, 0x03, 0x24];
/// Prefix of every FolderId.
const FOLDER_PREFIX: [u8; 4] = [0x00, 0x00, 0x03, 0x2E];
/// Prefix of an item's real ChangeKey (Exchange's calendar items: `DwAAABYAAA...`).
const ITEM_CHANGE_KEY_PREFIX: [u8; 8] = [0x0F, 0, 0, 0, 0x16, 0, 0, 0];
/// Prefix of a folder's real ChangeKey.
const FOLDER_CHANGE_KEY_PREFIX: [u8; 8] = [0x01, 0, 0, 0, 0x16, 0, 0, 0];
/// Prefix of a watermark (Exchange's start with `AQAAA`).
const WATERMARK_PREFIX: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// What an ItemId names: the mailbox (by its tag) and the item's serial. A move makes a new
/// serial, hence a new id; the salt makes ids unguessable from one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemKey {
    pub mailbox_tag: u32,
    pub serial: u64,
}

pub fn item_id(key: ItemKey, salt: u64) -> String {
    let mut bytes = Vec::with_capacity(28);
    bytes.extend_from_slice(&ITEM_PREFIX);
    bytes.extend_from_slice(&key.mailbox_tag.to_be_bytes());
    bytes.extend_from_slice(&key.serial.to_be_bytes());
    bytes.extend_from_slice(&salt.to_be_bytes());
    bytes.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
    base64_encode(&bytes)
}

/// The key inside an ItemId of ours; `None` when it is not one (malformed).
pub fn parse_item_id(id: &str) -> Option<ItemKey> {
    let bytes = base64_decode(id)?;
    if bytes.len() != 28 || bytes[..4] != ITEM_PREFIX {
        return None;
    }
    Some(ItemKey {
        mailbox_tag: u32::from_be_bytes(bytes[4..8].try_into().ok()?),
        serial: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
    })
}

pub fn folder_id(mailbox_tag: u32, folder_number: u8) -> String {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&FOLDER_PREFIX);
    bytes.extend_from_slice(&mailbox_tag.to_be_bytes());
    bytes.extend_from_slice(&[0x00, 0x2E, 0x00, folder_number]);
    bytes.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
    base64_encode(&bytes)
}

/// `(mailbox tag, folder number)` of a FolderId of ours.
pub fn parse_folder_id(id: &str) -> Option<(u32, u8)> {
    let bytes = base64_decode(id)?;
    if bytes.len() != 16 || bytes[..4] != FOLDER_PREFIX {
        return None;
    }
    Some((u32::from_be_bytes(bytes[4..8].try_into().ok()?), bytes[11]))
}

/// An item's real ChangeKey for a version: unique per modification across the simulator.
pub fn item_change_key(version: u64) -> String {
    change_key(&ITEM_CHANGE_KEY_PREFIX, version)
}

pub fn folder_change_key(version: u64) -> String {
    change_key(&FOLDER_CHANGE_KEY_PREFIX, version)
}

fn change_key(prefix: &[u8; 8], version: u64) -> String {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(prefix);
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
    base64_encode(&bytes)
}

/// The version inside an item ChangeKey of ours; `None` when malformed.
pub fn parse_item_change_key(key: &str) -> Option<u64> {
    let bytes = base64_decode(key)?;
    if bytes.len() != 20 || bytes[..8] != ITEM_CHANGE_KEY_PREFIX {
        return None;
    }
    Some(u64::from_be_bytes(bytes[8..16].try_into().ok()?))
}

/// What a watermark names: a position in one mailbox's event log, in one watermark epoch
/// (expiring watermarks starts a new epoch). `nonce` tells apart StatusEvent watermarks taken at
/// the same position; item events use 0, so an event has the same watermark in every replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkKey {
    pub mailbox_tag: u32,
    pub epoch: u32,
    pub position: u64,
    pub nonce: u32,
}

pub fn watermark(key: WatermarkKey) -> String {
    let mut bytes = Vec::with_capacity(24);
    bytes.extend_from_slice(&WATERMARK_PREFIX);
    bytes.extend_from_slice(&key.mailbox_tag.to_be_bytes());
    bytes.extend_from_slice(&key.epoch.to_be_bytes());
    bytes.extend_from_slice(&key.position.to_be_bytes());
    bytes.extend_from_slice(&key.nonce.to_be_bytes());
    base64_encode(&bytes)
}

pub fn parse_watermark(text: &str) -> Option<WatermarkKey> {
    let bytes = base64_decode(text)?;
    if bytes.len() != 24 || bytes[..4] != WATERMARK_PREFIX {
        return None;
    }
    Some(WatermarkKey {
        mailbox_tag: u32::from_be_bytes(bytes[4..8].try_into().ok()?),
        epoch: u32::from_be_bytes(bytes[8..12].try_into().ok()?),
        position: u64::from_be_bytes(bytes[12..20].try_into().ok()?),
        nonce: u32::from_be_bytes(bytes[20..24].try_into().ok()?),
    })
}

/// A subscription id: Exchange's name the server (`JgB...`); ours a serial plus random bytes.
pub fn subscription_id(serial: u64, random: u64) -> String {
    let mut bytes = Vec::with_capacity(40);
    bytes.extend_from_slice(&[0x26, 0x00]);
    bytes.extend_from_slice(b"sim.exchange.invalid");
    bytes.extend_from_slice(&serial.to_be_bytes());
    bytes.extend_from_slice(&random.to_be_bytes());
    base64_encode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..40usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64_encode(&bytes);
            if len == 0 {
                assert_eq!(base64_decode(&text), None, "empty is not an id");
            } else {
                assert_eq!(base64_decode(&text), Some(bytes), "{text}");
            }
        }
        assert_eq!(base64_encode(b"\x0f\0\0\0"), "DwAAAA==");
        assert_eq!(base64_encode(b"\x01\0\0\0"), "AQAAAA==");
    }

    #[test]
    fn base64_refuses_what_is_not_padded_base64() {
        for bad in [
            "A", "AB=C", "AAAA=AAA", "AA==AAAA", "AA-_", "AAA", "====", "A===",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_parse_back_and_are_told_apart() {
        let key = ItemKey {
            mailbox_tag: 0xDEAD_BEEF,
            serial: 42,
        };
        let id = item_id(key, 7);
        assert_eq!(parse_item_id(&id), Some(key));
        assert_eq!(parse_folder_id(&id), None);
        assert_eq!(parse_watermark(&id), None);
        let folder = folder_id(9, 3);
        assert_eq!(parse_folder_id(&folder), Some((9, 3)));
        assert_eq!(parse_item_id(&folder), None);
        let change_key = item_change_key(5);
        assert!(change_key.starts_with("DwAAABYAAA"), "{change_key}");
        assert_eq!(parse_item_change_key(&change_key), Some(5));
        assert_ne!(change_key, "DwAAAA==", "never the notification marker");
        let mark = WatermarkKey {
            mailbox_tag: 1,
            epoch: 2,
            position: 3,
            nonce: 4,
        };
        let text = watermark(mark);
        assert!(text.starts_with("AQAAA"), "{text}");
        assert_eq!(parse_watermark(&text), Some(mark));
        assert_eq!(
            parse_watermark("AQAAAOpvG0LURVdOhQkPOWZLPcI8EgAAAAAAAAE="),
            None
        );
    }
}
