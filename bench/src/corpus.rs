//! The documents every path of the benchmark writes: the merged master
//! documents of a generated data set (the generator's expected documents,
//! with one fixed `updatedAt`), serialized once as `_bulk` NDJSON so that no
//! measured path pays for serialization inside its timed window.
//!
//! The NDJSON is one contiguous buffer; a batch is a zero-copy slice of it.

use std::ops::Range;

use bytes::Bytes;

use rebuilder_dev::datagen::DatasetSpec;

const ACTION_HEAD: &[u8] = br#"{"index":{"_id":"#;
const ACTION_TAIL: &[u8] = b"}}\n";

/// The pre-serialized documents of a data set.
pub struct Corpus {
    ndjson: Bytes,
    /// Where each document's action line starts, then the end of the buffer.
    starts: Vec<usize>,
}

impl Corpus {
    /// Serializes every doctor of `spec` as an `index` action (explicit
    /// `_id`, no `_index`: the request path names it) and its document.
    pub fn generate(spec: &DatasetSpec, updated_at: &str) -> Self {
        let mut buf = Vec::with_capacity(spec.doctors.saturating_mul(720));
        let mut starts = Vec::with_capacity(spec.doctors + 1);
        for doctor in spec.doctors() {
            starts.push(buf.len());
            let mut doc = doctor.expected;
            doc.updated_at = Some(updated_at.to_string());
            buf.extend_from_slice(ACTION_HEAD);
            serde_json::to_writer(&mut buf, &doc.gmc_reference_number)
                .expect("a string always serializes");
            buf.extend_from_slice(ACTION_TAIL);
            serde_json::to_writer(&mut buf, &doc).expect("a document always serializes");
            buf.push(b'\n');
        }
        starts.push(buf.len());
        Self {
            ndjson: Bytes::from(buf),
            starts,
        }
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the whole NDJSON in bytes.
    pub fn ndjson_bytes(&self) -> usize {
        self.ndjson.len()
    }

    /// The `_bulk` body of documents `range` (a zero-copy slice).
    pub fn slice(&self, range: Range<usize>) -> Bytes {
        self.ndjson
            .slice(self.starts[range.start]..self.starts[range.end])
    }

    /// The first `docs` documents cut into `_bulk` bodies of `batch_docs`
    /// documents each, with their document counts.
    pub fn batches(&self, docs: usize, batch_docs: usize) -> Vec<(Bytes, usize)> {
        let docs = docs.min(self.len());
        let batch_docs = batch_docs.max(1);
        (0..docs)
            .step_by(batch_docs)
            .map(|start| {
                let end = (start + batch_docs).min(docs);
                (self.slice(start..end), end - start)
            })
            .collect()
    }

    /// The `_id` and the JSON source of document `i`.
    pub fn document(&self, i: usize) -> (String, Bytes) {
        let pair = self.ndjson.slice(self.starts[i]..self.starts[i + 1]);
        let newline = pair
            .iter()
            .position(|&b| b == b'\n')
            .expect("an action line ends with a newline");
        let id_json = &pair[ACTION_HEAD.len()..newline - (ACTION_TAIL.len() - 1)];
        let id: String = serde_json::from_slice(id_json).expect("the action line holds the _id");
        (id, pair.slice(newline + 1..pair.len() - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebuilder::domain::MasterDoctor;

    fn corpus() -> Corpus {
        Corpus::generate(&DatasetSpec::new(11, 25), "2026-01-02T03:04:05Z")
    }

    #[test]
    fn every_document_is_an_index_action_with_its_gmc_number_then_the_document() {
        let c = corpus();
        assert_eq!(c.len(), 25);
        let text = String::from_utf8(c.slice(0..c.len()).to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 50);
        for pair in lines.chunks(2) {
            let action: serde_json::Value = serde_json::from_str(pair[0]).unwrap();
            let doc: MasterDoctor = serde_json::from_str(pair[1]).unwrap();
            assert_eq!(action["index"]["_id"], doc.gmc_reference_number.as_str());
            assert_eq!(doc.updated_at.as_deref(), Some("2026-01-02T03:04:05Z"));
        }
    }

    #[test]
    fn batches_cover_the_requested_documents_exactly_once() {
        let c = corpus();
        let batches = c.batches(23, 5);
        assert_eq!(
            batches.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [5, 5, 5, 5, 3]
        );
        let joined: Vec<u8> = batches.iter().flat_map(|(b, _)| b.to_vec()).collect();
        assert_eq!(joined, c.slice(0..23).to_vec());
        assert_eq!(c.batches(1000, 10).len(), 3);
    }

    #[test]
    fn document_returns_the_id_and_the_source_of_one_document() {
        let c = corpus();
        let expected = DatasetSpec::new(11, 25).doctor(7).expected;
        let (id, source) = c.document(7);
        assert_eq!(id, expected.gmc_reference_number);
        let doc: MasterDoctor = serde_json::from_slice(&source).unwrap();
        assert_eq!(doc.doctor_last_name, expected.doctor_last_name);
    }
}
