//! Every doctor of `doctorsForDB`, page by page, read ahead by a task of
//! its own through one cursor sorted by `_id`. If the writer leaves a page
//! waiting longer than [`CURSOR_STALL_GUARD`], the task closes the cursor
//! and, once the page is taken, opens a new one after the last `_id` it
//! read, so no cursor idles into the server's ten-minute timeout (see the
//! notes of the `gmc` module).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::Collection;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::task::JoinHandle;
use tracing::{warn, Instrument};

use super::{projection, DoctorRow};
use crate::domain::GmcDoctor;
use crate::sources::SourceError;

/// How long the reader of `doctorsForDB` lets its cursor wait for a slow
/// consumer before it closes it (and later resumes by `_id`). DocumentDB and
/// MongoDB close cursors idle for ten minutes.
pub const CURSOR_STALL_GUARD: Duration = Duration::from_secs(60);

/// Pages of `doctorsForDB`, in `_id` order, read by a task of their own
/// (see [`super::GmcSource::pages`]).
#[derive(Debug)]
pub struct DoctorPages {
    pages: mpsc::Receiver<Result<DoctorPage, SourceError>>,
    resumes: Arc<AtomicU64>,
    reader: JoinHandle<()>,
}

/// One page of doctors.
#[derive(Debug, Default)]
pub struct DoctorPage {
    pub rows: Vec<DoctorRow>,
}

impl DoctorPages {
    /// Starts the reader task over `doctors`, `page_size` doctors a page.
    pub(super) fn start(
        doctors: Collection<Document>,
        page_size: usize,
        stall_guard: Duration,
    ) -> Self {
        let (tx, pages) = mpsc::channel(2);
        let resumes = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(
            read_doctors(doctors, page_size, stall_guard, tx, resumes.clone()).in_current_span(),
        );
        Self {
            pages,
            resumes,
            reader,
        }
    }

    /// The next page, or `None` when every doctor was read.
    pub async fn next_page(&mut self) -> Result<Option<DoctorPage>, SourceError> {
        self.pages.recv().await.transpose()
    }

    /// How many times the reader closed its cursor during a stall and resumed.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }
}

impl Drop for DoctorPages {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads every doctor through one cursor sorted by `_id`, in pages. When the
/// consumer keeps a page waiting longer than `stall_guard`, the cursor is
/// dropped (the driver kills it on the server) and, once the page is taken,
/// a new one starts after the last `_id` read.
async fn read_doctors(
    doctors: Collection<Document>,
    page_size: usize,
    stall_guard: Duration,
    pages: mpsc::Sender<Result<DoctorPage, SourceError>>,
    resumes: Arc<AtomicU64>,
) {
    let mut after: Option<Bson> = None;
    loop {
        let filter = after.as_ref().map(resume_filter).unwrap_or_default();
        let cursor = doctors
            .find(filter)
            .sort(doc! {"_id": 1})
            .projection(projection())
            .batch_size(page_size as u32)
            .await;
        let mut cursor = match cursor {
            Ok(c) => c,
            Err(e) => {
                let _ = pages.send(Err(e.into())).await;
                return;
            }
        };
        let mut rows = Vec::with_capacity(page_size);
        let stalled = loop {
            let doc = match cursor.try_next().await {
                Ok(Some(doc)) => doc,
                Ok(None) => {
                    if !rows.is_empty() {
                        let _ = pages.send(Ok(DoctorPage { rows })).await;
                    }
                    return;
                }
                Err(e) => {
                    let _ = pages.send(Err(e.into())).await;
                    return;
                }
            };
            after = doc.get("_id").cloned();
            rows.push(GmcDoctor::from_document(&doc));
            if rows.len() < page_size {
                continue;
            }
            let page = DoctorPage {
                rows: std::mem::replace(&mut rows, Vec::with_capacity(page_size)),
            };
            match pages.send_timeout(Ok(page), stall_guard).await {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(page)) => break page,
                Err(SendTimeoutError::Closed(_)) => return,
            }
        };
        drop(cursor);
        resumes.fetch_add(1, Ordering::Relaxed);
        warn!(
            stall_secs = stall_guard.as_secs(),
            after = ?after,
            "The writer stalled; closed the doctorsForDB cursor and will resume after the last id."
        );
        if pages.send(stalled).await.is_err() {
            return;
        }
    }
}

/// The filter that continues a read sorted by `_id` after `last`. `$gt`
/// compares within one BSON type, and numbers sort before strings, so after
/// a numeric id the strings follow as well. (Ids of other types sort after
/// strings; they are unusable anyway and are only read by the first cursor.)
fn resume_filter(last: &Bson) -> Document {
    match last {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            doc! {"$or": [{"_id": {"$gt": last.clone()}}, {"_id": {"$gte": ""}}]}
        }
        _ => doc! {"_id": {"$gt": last.clone()}},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_resumes_after_the_last_id_and_numbers_continue_into_strings() {
        assert_eq!(
            resume_filter(&Bson::String("1000".into())),
            doc! {"_id": {"$gt": "1000"}}
        );
        assert_eq!(
            resume_filter(&Bson::Int64(7)),
            doc! {"$or": [{"_id": {"$gt": 7_i64}}, {"_id": {"$gte": ""}}]}
        );
    }
}
