//! `tf.train.Example`, declared with prost derive (no protoc), following TensorFlow's
//! `tensorflow/core/example/{example,feature}.proto`:
//!
//! ```text
//! message Example   { Features features = 1; }
//! message Features  { map<string, Feature> feature = 1; }
//! message Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
//! message BytesList { repeated bytes value = 1; }
//! message FloatList { repeated float value = 1 [packed = true]; }
//! message Int64List { repeated int64 value = 1 [packed = true]; }
//! ```
//! prost accepts packed and unpacked encodings of repeated scalars alike on decode (as protobuf requires);
//! it writes them packed, as TensorFlow does.

use std::collections::BTreeMap;

use prost::Message;

use crate::error::{Error, Location, Result};

#[derive(Clone, PartialEq, Message)]
pub struct Example {
    #[prost(message, optional, tag = "1")]
    pub features: Option<Features>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Features {
    /// A BTreeMap so that encoding is deterministic (same episode -> same bytes).
    #[prost(btree_map = "string, message", tag = "1")]
    pub feature: BTreeMap<String, Feature>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Feature {
    #[prost(oneof = "Kind", tags = "1, 2, 3")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "1")]
    BytesList(BytesList),
    #[prost(message, tag = "2")]
    FloatList(FloatList),
    #[prost(message, tag = "3")]
    Int64List(Int64List),
}

#[derive(Clone, PartialEq, Message)]
pub struct BytesList {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub value: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FloatList {
    #[prost(float, repeated, tag = "1")]
    pub value: Vec<f32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Int64List {
    #[prost(int64, repeated, tag = "1")]
    pub value: Vec<i64>,
}

impl Feature {
    pub fn bytes(values: Vec<Vec<u8>>) -> Self {
        Feature {
            kind: Some(Kind::BytesList(BytesList { value: values })),
        }
    }
    pub fn floats(values: Vec<f32>) -> Self {
        Feature {
            kind: Some(Kind::FloatList(FloatList { value: values })),
        }
    }
    pub fn int64s(values: Vec<i64>) -> Self {
        Feature {
            kind: Some(Kind::Int64List(Int64List { value: values })),
        }
    }
    /// Name of the list kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Some(Kind::BytesList(_)) => "bytes_list",
            Some(Kind::FloatList(_)) => "float_list",
            Some(Kind::Int64List(_)) => "int64_list",
            None => "empty",
        }
    }
}

impl Example {
    /// Decode one serialized Example; `loc` names the file and record for errors.
    pub fn decode_at(data: &[u8], loc: &Location) -> Result<Self> {
        Example::decode(data)
            .map_err(|e| Error::invalid(loc.clone(), format!("malformed tf.train.Example: {e}")))
    }

    pub fn from_features(feature: BTreeMap<String, Feature>) -> Self {
        Example {
            features: Some(Features { feature }),
        }
    }

    /// The feature map (empty when the Example has none).
    pub fn into_map(self) -> BTreeMap<String, Feature> {
        self.features.map(|f| f.feature).unwrap_or_default()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}
