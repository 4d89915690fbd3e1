//! A connection's queue of outbound frames: bounded, many senders, one
//! receiver, and no allocation until a frame is queued.
//!
//! tokio's `mpsc` channel allocates its first block of 32 slots when it is
//! made, about 1.3 KiB with its bookkeeping; most connections of a
//! signaling server sit idle, and at 19,000 of them that block was a fifth
//! of the server's memory. This queue is a `VecDeque` behind a mutex (held
//! only to push or pop) and a `Notify`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The queue holds its capacity: the client does not keep up.
    Full,
    /// The connection is gone.
    Closed,
}

struct Queue<T> {
    items: VecDeque<T>,
    cap: usize,
    closed: bool,
}

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    ready: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // The lock is never held across a panic point that leaves the queue
        // inconsistent, so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half; clones share the queue.
pub(crate) struct Sender<T>(Arc<Shared<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("outbox::Sender")
    }
}

/// The receiving half, owned by the connection task. Dropping it closes
/// the queue and frees what was still in it.
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

/// A queue for at most `cap` frames.
pub(crate) fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            cap,
            closed: false,
        }),
        ready: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item` without waiting.
    pub(crate) fn try_send(&self, item: T) -> Result<(), SendError> {
        {
            let mut q = self.0.lock();
            if q.closed {
                return Err(SendError::Closed);
            }
            if q.items.len() >= q.cap {
                return Err(SendError::Full);
            }
            q.items.push_back(item);
        }
        // Stores a permit if the receiver is not waiting yet.
        self.0.ready.notify_one();
        Ok(())
    }
}

/// Queues that grew past this many slots give their memory back once empty.
const KEEP_SLOTS: usize = 8;

impl<T> Receiver<T> {
    /// Takes the next frame, if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        let mut q = self.0.lock();
        let item = q.items.pop_front();
        if q.items.is_empty() && q.items.capacity() > KEEP_SLOTS {
            q.items = VecDeque::new();
        }
        item
    }

    /// Waits for the next frame. Cancel-safe: a frame is only taken when
    /// this returns it.
    pub(crate) async fn recv(&mut self) -> T {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            self.0.ready.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.closed = true;
        q.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn frames_arrive_in_order_up_to_the_capacity() {
        let (tx, mut rx) = channel(3);
        let tx2 = tx.clone();
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx2.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Ok(()));
        assert_eq!(tx.try_send(4), Err(SendError::Full));
        assert_eq!(rx.recv().await, 1);
        assert_eq!(tx.try_send(5), Ok(()));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), Some(5));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_frame_sent_later() {
        let (tx, mut rx) = channel(4);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send("hello").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, "hello");
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_nothing() {
        let (tx, mut rx) = channel(4);
        // A select that gives up on the queue, as the connection loop's
        // other branches do.
        let gave_up = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert!(gave_up.is_err());
        tx.try_send(7).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        assert_eq!(got.ok(), Some(7));
    }

    #[test]
    fn a_dropped_receiver_closes_the_queue() {
        let (tx, rx) = channel(4);
        tx.try_send(1).unwrap();
        drop(rx);
        assert_eq!(tx.try_send(2), Err(SendError::Closed));
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = channel(100);
        for i in 0..50 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(tx.0.lock().items.capacity(), 0);
    }
}
