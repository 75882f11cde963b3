//! How a lane starts its machines: `<prefix>-00000`, `<prefix>-00001`, … each in a task of
//! its own, at most `concurrency` at once, finished tasks reaped as new ones start. Both
//! lanes start theirs this way; each decides for itself when to stop starting.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::Semaphore, task::JoinSet};

pub struct Starter {
    prefix: &'static str,
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
    started: u64,
}

impl Starter {
    pub fn new(prefix: &'static str, concurrency: usize) -> Self {
        Self {
            prefix,
            permits: Arc::new(Semaphore::new(concurrency)),
            tasks: JoinSet::new(),
            started: 0,
        }
    }

    /// Machines started so far.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Waits up to half a second for a free slot and starts `machine` with the next name in
    /// it. `false` when no slot came free, so that the caller checks its bounds again.
    pub async fn start_next<F, Fut>(&mut self, machine: F) -> bool
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(Ok(permit)) = tokio::time::timeout(
            Duration::from_millis(500),
            self.permits.clone().acquire_owned(),
        )
        .await
        else {
            return false;
        };
        let name = format!("{}-{:05}", self.prefix, self.started);
        self.started += 1;
        let run = machine(name);
        self.tasks.spawn(async move {
            run.await;
            drop(permit);
        });
        while self.tasks.try_join_next().is_some() {}
        true
    }

    /// The machines still running, for the drain.
    pub fn into_tasks(self) -> JoinSet<()> {
        self.tasks
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn machines_are_named_in_order_and_counted() {
        let names = Arc::new(Mutex::new(Vec::new()));
        let mut starter = Starter::new("t", 3);
        for _ in 0..3 {
            let names = names.clone();
            let started = starter
                .start_next(|name| async move { names.lock().unwrap().push(name) })
                .await;
            assert!(started);
        }
        assert_eq!(starter.started(), 3);
        let mut tasks = starter.into_tasks();
        while tasks.join_next().await.is_some() {}
        let mut names = names.lock().unwrap().clone();
        names.sort();
        assert_eq!(names, ["t-00000", "t-00001", "t-00002"]);
    }
}
