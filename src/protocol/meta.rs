//! Meta protocol (placeholder until the meta codec lands).
use bytes::BytesMut;

use super::{Outcome, Request};
use crate::key::Key;
use crate::store::ItemRef;

#[derive(Debug, Clone)]
pub enum MetaCommand {}

#[derive(Debug, Clone)]
pub struct MetaReply {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("meta")]
pub struct MetaError;

pub fn decode(_buf: &mut BytesMut, _line_end: usize) -> Result<Option<Request>, MetaError> {
    Err(MetaError)
}

pub fn encode(_r: &MetaReply, _o: &Outcome, _out: &mut BytesMut) {}
pub fn encode_hit(_r: &MetaReply, _i: &ItemRef<'_>, _out: &mut BytesMut) {}
pub fn encode_miss(_r: &MetaReply, _k: &Key, _out: &mut BytesMut) {}
