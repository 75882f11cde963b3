//! One module per numbered item of BENCHMARKS.md; each starts its own stack, measures, and
//! appends its section to the report.

mod api_calls;
mod create_storm;
mod footprint;
mod latency;
mod list_scale;
mod throughput;

pub(crate) use api_calls::api_calls;
pub(crate) use create_storm::create_storm;
pub(crate) use footprint::footprint;
pub(crate) use latency::latency;
pub(crate) use list_scale::list_scale;
pub(crate) use throughput::throughput;
