//! Choosing the compute device.
use anyhow::{bail, Result};
use tch::Device;

pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        n => match n.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Ok(Device::Cuda(i)),
            None => bail!("unknown device `{name}` (use cpu, cuda or cuda:N)"),
        },
    }
}

/// The device to run on; a CUDA request without a GPU falls back to the CPU, loudly.
pub fn resolve(name: &str) -> Result<Device> {
    let d = parse(name)?;
    if let Device::Cuda(i) = d {
        let n = tch::Cuda::device_count();
        if !tch::Cuda::is_available() || i as i64 >= n {
            eprintln!("gcl: warning: device {name} asked for, but libtorch sees {n} CUDA device(s); running on the CPU instead");
            return Ok(Device::Cpu);
        }
    }
    Ok(d)
}
