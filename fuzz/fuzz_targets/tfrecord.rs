//! TFRecord framing then `tf.train.Example` decoding of every record, as the RLDS reader does: any bytes give
//! records or an error naming the file, never a panic or an allocation the input does not pay for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vadapt::io::rlds::example::Example;
use vadapt::io::rlds::tfrecord::TfRecordReader;

fuzz_target!(|data: &[u8]| {
    let reader = TfRecordReader::new(std::io::Cursor::new(data), "fuzz.tfrecord");
    for (i, record) in reader.enumerate() {
        match record {
            Ok(bytes) => {
                let loc = vadapt::Location::file("fuzz.tfrecord").episode(i as u64);
                let _ = Example::decode_at(&bytes, &loc).map(|e| e.into_map());
            }
            Err(e) => {
                assert!(e.location().and_then(|l| l.path.as_ref()).is_some(), "{e}");
                break;
            }
        }
    }
});
