//! Scoring a pool of volumes, optionally with reading and preprocessing off the critical path
//! ([`PoolOrder::Overlapped`]): while the model scores volume i, a second thread reads volume
//! i + 1 from disk (gzip, DICOM decoding) and prepares it on the model grid
//! ([`Engine::prepare_for_score`]). At most one prepared volume waits, so memory grows by one
//! volume, not by the pool. Scores equal [`Engine::score`]'s, in the order of the items, in
//! either order.

use std::sync::mpsc;

use crate::cancel::CancelToken;
use crate::engine::{Engine, PreparedVolume};
use crate::error::{Error, ErrorKind, Result};
use crate::score::Score;
use crate::volume::Volume;

/// How [`score_pool`] runs.
///
/// Measured on a 2-vCPU machine (scripts/bench_pool.sh, 12 pd volumes, 2026-12-03): overlapped
/// was 1.16x slower than sequential with 2 ONNX Runtime threads (load 1.7-3.4) and 1.12x slower
/// with 1 thread (load 1.1-3.1), so sequential is the default; overlap is for machines with cores
/// to spare for the reader (unmeasured here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PoolOrder {
    /// Read and prepare the next volume while the current one is scored.
    Overlapped,
    /// One volume at a time: read, prepare, score, then the next (least memory; default).
    #[default]
    Sequential,
}

/// Scores `items` (each an id and what `read` needs to load its volume) in order. `progress`
/// gets (item index, fraction of that item done) and returns `false` to cancel; `each` gets every
/// item's result as it finishes (a failed read or score is that item's error, and the others go
/// on) and returns `false` to stop early. Cancelling `cancel` stops the model run in flight and
/// the reader. Returns how many items were scored or failed before a stop.
pub fn score_pool<T: Sync>(
    engine: &Engine,
    items: &[(String, T)],
    read: &(dyn Fn(&T) -> Result<Volume> + Sync),
    order: PoolOrder,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, f64) -> bool,
    each: &mut dyn FnMut(usize, Result<Score>) -> bool,
) -> usize {
    let prepare = |item: &T| read(item).and_then(|volume| engine.prepare_for_score(volume));
    let mut score = |index: usize, prepared: Result<PreparedVolume>| {
        let id = &items[index].0;
        let result = prepared.and_then(|p| engine.score_prepared(id, &p, cancel, &mut |f| progress(index, f)));
        each(index, result.map_err(|e| e.context(format!("'{id}'"))))
    };
    if order == PoolOrder::Sequential {
        for (index, (_, item)) in items.iter().enumerate() {
            if cancel.is_cancelled() || !score(index, prepare(item)) {
                return index + 1;
            }
        }
        return items.len();
    }
    std::thread::scope(|scope| {
        // Capacity 0: the reader prepares one volume ahead and blocks until it is taken.
        let (tx, rx) = mpsc::sync_channel::<Result<PreparedVolume>>(0);
        scope.spawn(move || {
            for (_, item) in items {
                if cancel.is_cancelled() || tx.send(prepare(item)).is_err() {
                    break; // cancelled, or the scorer stopped and dropped the receiver
                }
            }
        });
        let mut done = 0;
        for index in 0..items.len() {
            let prepared =
                rx.recv().unwrap_or_else(|_| Err(Error::new(ErrorKind::Cancelled, "scoring the pool was cancelled")));
            done = index + 1;
            if !score(index, prepared) || cancel.is_cancelled() {
                break;
            }
        }
        drop(rx); // unblocks a reader waiting to hand over the next volume
        done
    })
}
