//! Property tests: arbitrary bytes never panic a reader; arbitrary frames and requests
//! survive encoding and reading back, however the bytes are split into reads.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use super::encode::format_double;
use super::{encode, split_args, Frame, RequestDecoder, RESP2, RESP3};

fn leaf() -> impl Strategy<Value = Frame> {
    prop_oneof![
        "[^\r\n]{0,16}".prop_map(Frame::Simple),
        "[^\r\n]{0,16}".prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        vec(any::<u8>(), 0..48).prop_map(|v| Frame::Bulk(v.into())),
        Just(Frame::Null),
        Just(Frame::NullArray),
        any::<f64>().prop_filter("NaN is not equal to itself", |d| !d.is_nan()).prop_map(Frame::Double),
        any::<bool>().prop_map(Frame::Boolean),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Frame::Array),
            vec(inner.clone(), 0..6).prop_map(Frame::Set),
            vec((inner.clone(), inner), 0..6).prop_map(Frame::Map),
        ]
    })
}

/// What `frame` reads back as after encoding for `proto`.
fn as_sent(frame: &Frame, proto: u8) -> Frame {
    let all = |items: &[Frame]| items.iter().map(|f| as_sent(f, proto)).collect::<Vec<_>>();
    match (frame, proto) {
        (Frame::NullArray, RESP3) => Frame::Null,
        (Frame::Array(items), _) => Frame::Array(all(items)),
        (Frame::Set(items), RESP3) => Frame::Set(all(items)),
        (Frame::Set(items), _) => Frame::Array(all(items)),
        (Frame::Map(pairs), RESP3) => {
            Frame::Map(pairs.iter().map(|(k, v)| (as_sent(k, proto), as_sent(v, proto))).collect())
        }
        (Frame::Map(pairs), _) => {
            Frame::Array(pairs.iter().flat_map(|(k, v)| [as_sent(k, proto), as_sent(v, proto)]).collect())
        }
        (Frame::Double(d), RESP2) => Frame::Bulk(format_double(*d).into()),
        (Frame::Pairs(pairs), RESP3) => {
            Frame::Array(pairs.iter().map(|(a, b)| Frame::Array(vec![as_sent(a, proto), as_sent(b, proto)])).collect())
        }
        (Frame::Pairs(pairs), _) => {
            Frame::Array(pairs.iter().flat_map(|(a, b)| [as_sent(a, proto), as_sent(b, proto)]).collect())
        }
        (Frame::Boolean(b), RESP2) => Frame::Integer(i64::from(*b)),
        (other, _) => other.clone(),
    }
}

/// Feeds `bytes` in pieces cut at `cuts` (positions, any order, out of range ignored).
fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        out.push(bytes[start..cut].to_vec());
        start = cut;
    }
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_frame_reader(bytes in vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = Frame::decode(&mut buf) {}
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_request_decoder(
        bytes in vec(any::<u8>(), 0..256),
        cuts in vec(any::<usize>(), 0..4),
        request_bytes_max in 1usize..128,
    ) {
        let mut decoder = RequestDecoder::new(request_bytes_max);
        let mut buf = BytesMut::new();
        'read: for piece in pieces(&bytes, &cuts) {
            buf.extend_from_slice(&piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(args)) => prop_assert!(!args.is_empty()),
                    Ok(None) => break,
                    Err(_) => break 'read,
                }
            }
        }
    }

    #[test]
    fn resp_like_bytes_never_panic_the_readers(
        parts in vec(proptest::sample::select(vec![
            "*", "$", "%", "~", ",", "#", "\r\n", "\n", "-1", "1", "2", "x", "\"", "'", " ", "_", "\\x4",
        ]), 0..64),
    ) {
        let bytes = parts.concat().into_bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = Frame::decode(&mut buf) {}
        let mut decoder = RequestDecoder::new(1024);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    }

    #[test]
    fn frames_round_trip(frame in frame(), cuts in vec(any::<usize>(), 0..4)) {
        for proto in [RESP2, RESP3] {
            let mut encoded = BytesMut::new();
            encode(&frame, proto, &mut encoded);
            let mut buf = BytesMut::new();
            let mut read = Vec::new();
            for piece in pieces(&encoded, &cuts) {
                buf.extend_from_slice(&piece);
                while let Some(f) = Frame::decode(&mut buf).unwrap() {
                    read.push(f);
                }
            }
            prop_assert_eq!(read, vec![as_sent(&frame, proto)]);
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn multibulk_requests_round_trip(
        requests in vec(vec(vec(any::<u8>(), 0..24), 1..5), 1..5),
        cuts in vec(any::<usize>(), 0..6),
    ) {
        let mut encoded = BytesMut::new();
        for args in &requests {
            let frame = Frame::Array(args.iter().map(|a| Frame::Bulk(Bytes::copy_from_slice(a))).collect());
            encode(&frame, RESP2, &mut encoded);
        }
        let mut decoder = RequestDecoder::new(1024 * 1024);
        let mut buf = BytesMut::new();
        let mut read = Vec::new();
        for piece in pieces(&encoded, &cuts) {
            buf.extend_from_slice(&piece);
            while let Some(args) = decoder.decode(&mut buf).unwrap() {
                read.push(args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
        }
        prop_assert_eq!(read, requests);
    }

    #[test]
    fn hex_quoted_inline_arguments_round_trip(args in vec(vec(any::<u8>(), 0..16), 1..5)) {
        let line: String = args
            .iter()
            .map(|arg| format!("\"{}\"", arg.iter().map(|b| format!("\\x{b:02x}")).collect::<String>()))
            .collect::<Vec<_>>()
            .join(" ");
        let split = split_args(line.as_bytes()).unwrap();
        prop_assert_eq!(split.iter().map(|a| a.to_vec()).collect::<Vec<_>>(), args);
    }
}
