//! Every doctor of `doctorsForDB`, page by page, read ahead by a task of
//! its own through one cursor sorted by `_id`. If the writer leaves a page
//! waiting longer than [`CURSOR_STALL_GUARD`], the task closes the cursor
//! and, once the page is taken, opens a new one after the last `_id` it
//! read, so no cursor idles into the server's ten-minute timeout (see the
//! notes of the `gmc` module). A server that goes away mid-read is waited
//! for the same way: a new cursor after the last `_id`, nothing read twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::Collection;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::task::JoinHandle;
use tracing::{warn, Instrument};

use super::{projection, DoctorRow};
use crate::domain::GmcDoctor;
use crate::retry::{Retriable, RetryPolicy};
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
    /// The reader task was awaited (its channel closed).
    reader_joined: bool,
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
        retry: RetryPolicy,
    ) -> Self {
        let (tx, pages) = mpsc::channel(2);
        let resumes = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(
            read_doctors(doctors, page_size, stall_guard, retry, tx, resumes.clone())
                .in_current_span(),
        );
        Self {
            pages,
            resumes,
            reader,
            reader_joined: false,
        }
    }

    /// The next page, or `None` when every doctor was read. The channel
    /// also closes when the reader task dies (a panic), with doctors unread:
    /// that is told apart by how the task ended, and is an error.
    pub async fn next_page(&mut self) -> Result<Option<DoctorPage>, SourceError> {
        if let Some(page) = self.pages.recv().await {
            return page.map(Some);
        }
        if !self.reader_joined {
            self.reader_joined = true;
            if let Err(e) = (&mut self.reader).await {
                return Err(SourceError::ReaderDied {
                    source_name: "doctorsForDB".into(),
                    cause: crate::telemetry::join_error_text(e),
                });
            }
        }
        Ok(None)
    }

    /// How many times the reader left a cursor (a stall, a server gone away)
    /// and resumed after the last id.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }
}

impl Drop for DoctorPages {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Why a cursor was left before its end.
enum Interrupted {
    /// The consumer kept this page waiting past the stall guard.
    Stalled(DoctorPage),
    /// The server went away (a restart, a failover, a network cut).
    Lost(mongodb::error::Error),
    /// The cursor said it was done, yet a doctor after the last id read
    /// exists: the server ended it early (seen as a possible cause of a read
    /// short by a quarter when MongoDB restarted mid-run in CI).
    EndedEarly,
}

/// Reads every doctor through one cursor sorted by `_id`, in pages. When the
/// consumer keeps a page waiting longer than `stall_guard`, the cursor is
/// dropped (the driver kills it on the server) and, once the page is taken,
/// a new one starts after the last `_id` read. When MongoDB goes away mid-read
/// (a transient error), the rows read so far are kept and a new cursor
/// starts after the last `_id` once the server answers again, with the
/// retry policy's backoff; a read that still fails when the policy is spent,
/// or fails for good, ends with the error. A cursor that says it is done is
/// not taken at its word: one index probe asks for a doctor after the last
/// id read, and the read goes on after it if there is one.
async fn read_doctors(
    doctors: Collection<Document>,
    page_size: usize,
    stall_guard: Duration,
    retry: RetryPolicy,
    pages: mpsc::Sender<Result<DoctorPage, SourceError>>,
    resumes: Arc<AtomicU64>,
) {
    let mut after: Option<Bson> = None;
    let mut backoff = BackoffBuilder::build(retry.backoff());
    loop {
        let before = after.clone();
        let interrupted =
            match read_from(&doctors, page_size, stall_guard, &pages, &mut after).await {
                Read::Done => return,
                Read::Ended => match more_after(&doctors, after.as_ref()).await {
                    Ok(false) => return,
                    Ok(true) => Interrupted::EndedEarly,
                    Err(e) => Interrupted::Lost(e),
                },
                Read::Interrupted(interrupted) => interrupted,
            };
        resumes.fetch_add(1, Ordering::Relaxed);
        if after != before {
            // The read moved on since the last interruption: a new outage
            // gets the whole retry policy again.
            backoff = BackoffBuilder::build(retry.backoff());
        }
        match interrupted {
            Interrupted::Stalled(page) => {
                warn!(
                    stall_secs = stall_guard.as_secs(),
                    after = ?after,
                    "The writer stalled; closed the doctorsForDB cursor and will resume after the last id."
                );
                if pages.send(Ok(page)).await.is_err() {
                    return;
                }
            }
            Interrupted::EndedEarly if after == before => {
                // Twice at the same place: not an early end to ride out.
                let _ = pages
                    .send(Err(SourceError::ReaderDied {
                        source_name: "doctorsForDB".into(),
                        cause: format!(
                            "its cursors end without reaching the doctors after {after:?}"
                        ),
                    }))
                    .await;
                return;
            }
            Interrupted::EndedEarly => {
                warn!(
                    after = ?after,
                    "The doctorsForDB cursor ended before the last doctor; resuming after the last id read."
                );
            }
            Interrupted::Lost(e) => {
                // The sources' one rule: a transient failure, or a cursor
                // the server no longer knows (a new one after the last id
                // goes on).
                let e = SourceError::from(e);
                let delay = match backoff.next() {
                    Some(delay) if e.is_retriable() => delay,
                    _ => {
                        let _ = pages.send(Err(e)).await;
                        return;
                    }
                };
                warn!(
                    error = %e,
                    after = ?after,
                    retry_in_ms = delay.as_millis() as u64,
                    "MongoDB went away mid-read of doctorsForDB; resuming after the last id read."
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How one cursor's read ended.
enum Read {
    /// The consumer is gone: nothing more to do.
    Done,
    /// The cursor is exhausted and every row it gave was sent.
    Ended,
    Interrupted(Interrupted),
}

/// Whether `doctorsForDB` holds a doctor after `last` (one index probe).
async fn more_after(
    doctors: &Collection<Document>,
    last: Option<&Bson>,
) -> Result<bool, mongodb::error::Error> {
    let Some(last) = last else {
        // Nothing was read: an empty collection, or one the cursor's own
        // `find` found empty a moment ago.
        return Ok(false);
    };
    Ok(doctors
        .find_one(resume_filter(last))
        .projection(doc! {"_id": 1})
        .await?
        .is_some())
}

/// One cursor from after `after` to its end or until it is interrupted.
/// The rows read before an interruption by the server are sent first, so
/// nothing read is read twice.
async fn read_from(
    doctors: &Collection<Document>,
    page_size: usize,
    stall_guard: Duration,
    pages: &mpsc::Sender<Result<DoctorPage, SourceError>>,
    after: &mut Option<Bson>,
) -> Read {
    let filter = after.as_ref().map(resume_filter).unwrap_or_default();
    let cursor = doctors
        .find(filter)
        .sort(doc! {"_id": 1})
        .projection(projection())
        .batch_size(page_size as u32)
        .await;
    let mut cursor = match cursor {
        Ok(c) => c,
        Err(e) => return Read::Interrupted(Interrupted::Lost(e)),
    };
    let mut rows = Vec::with_capacity(page_size);
    loop {
        let doc = match cursor.try_next().await {
            Ok(Some(doc)) => doc,
            Ok(None) => {
                if !rows.is_empty() && pages.send(Ok(DoctorPage { rows })).await.is_err() {
                    return Read::Done;
                }
                return Read::Ended;
            }
            Err(e) => {
                if !rows.is_empty() && pages.send(Ok(DoctorPage { rows })).await.is_err() {
                    return Read::Done;
                }
                return Read::Interrupted(Interrupted::Lost(e));
            }
        };
        *after = doc.get("_id").cloned();
        rows.push(GmcDoctor::from_document(&doc));
        if rows.len() < page_size {
            continue;
        }
        let page = DoctorPage {
            rows: std::mem::replace(&mut rows, Vec::with_capacity(page_size)),
        };
        match pages.send_timeout(Ok(page), stall_guard).await {
            // The fault suite cuts MongoDB here, with the cursor open.
            Ok(()) => crate::failpoint::hit("gmc_page").await,
            Err(SendTimeoutError::Timeout(page)) => {
                return Read::Interrupted(Interrupted::Stalled(page.expect("an Ok page was sent")))
            }
            Err(SendTimeoutError::Closed(_)) => return Read::Done,
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
