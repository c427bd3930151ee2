//! DLPack, the C interface `torch.from_dlpack` takes: a batch's memory, owned by the engine,
//! described as a tensor that torch wraps without a copy and hands back (through the
//! deleter) when the tensor is freed.

use std::ffi::c_void;

use crate::batch_memory::BatchBuf;
use crate::error::{Error, Result};

/// `kDLCPU`.
const CPU: i32 = 1;

#[repr(C)]
pub struct DLDevice {
    pub device_type: i32,
    pub device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

#[repr(C)]
pub struct DLTensor {
    pub data: *mut c_void,
    pub device: DLDevice,
    pub ndim: i32,
    pub dtype: DLDataType,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}

#[repr(C)]
pub struct DLManagedTensor {
    pub dl_tensor: DLTensor,
    pub manager_ctx: *mut c_void,
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// A managed tensor with what it points into: its shape, strides and memory. The tensor
/// comes first, so a pointer to it is a pointer to the whole.
#[repr(C)]
struct Owned {
    tensor: DLManagedTensor,
    shape: Vec<i64>,
    strides: Vec<i64>,
    memory: BatchBuf,
}

/// The DLPack type of an element type by name (`"float32"`, `"bfloat16"`...).
///
/// # Errors
/// [`Error::InvalidArgument`] for a name that is not an element type.
pub fn data_type(name: &str) -> Result<DLDataType> {
    let (code, bits) = match name {
        "bool" => (6, 8),
        "int8" => (0, 8),
        "int16" => (0, 16),
        "int32" => (0, 32),
        "int64" => (0, 64),
        "uint8" => (1, 8),
        "uint16" => (1, 16),
        "uint32" => (1, 32),
        "uint64" => (1, 64),
        "float16" => (2, 16),
        "float32" => (2, 32),
        "float64" => (2, 64),
        "bfloat16" => (4, 16),
        "complex64" => (5, 64),
        "complex128" => (5, 128),
        other => {
            return Err(Error::InvalidArgument(format!(
                "{other} is not an element type"
            )))
        }
    };
    Ok(DLDataType {
        code,
        bits,
        lanes: 1,
    })
}

/// A C-contiguous CPU tensor of `shape` and `dtype` over `memory`, to be handed to a
/// consumer, which calls its deleter once it is done with it (or to [`delete`]).
///
/// # Errors
/// [`Error::InvalidArgument`] when `memory` is not exactly the tensor's size.
pub fn managed_tensor(
    mut memory: BatchBuf,
    shape: &[usize],
    dtype: DLDataType,
) -> Result<*mut DLManagedTensor> {
    let elements: usize = shape.iter().product();
    if elements * usize::from(dtype.bits / 8).max(1) * usize::from(dtype.lanes) != memory.len() {
        return Err(Error::InvalidArgument(format!(
            "{} bytes of memory for a tensor of shape {shape:?} and {} bits per element",
            memory.len(),
            dtype.bits
        )));
    }
    let mut strides = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1] as i64;
    }
    let data = memory.as_mut_ptr().cast();
    let mut owned = Box::new(Owned {
        tensor: DLManagedTensor {
            dl_tensor: DLTensor {
                data,
                device: DLDevice {
                    device_type: CPU,
                    device_id: 0,
                },
                ndim: shape.len() as i32,
                dtype,
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(delete),
        },
        shape: shape.iter().map(|&s| s as i64).collect(),
        strides,
        memory,
    });
    // The vectors' buffers do not move when the box is made a raw pointer.
    owned.tensor.dl_tensor.shape = owned.shape.as_mut_ptr();
    owned.tensor.dl_tensor.strides = owned.strides.as_mut_ptr();
    Ok(Box::into_raw(owned).cast())
}

/// Frees a tensor made by [`managed_tensor`]: its memory goes back to its
/// [`crate::batch_memory::BatchMemory`].
///
/// # Safety
/// `tensor` comes from [`managed_tensor`] and is deleted once.
pub unsafe extern "C" fn delete(tensor: *mut DLManagedTensor) {
    if !tensor.is_null() {
        // SAFETY: `managed_tensor` made `tensor` from a `Box<Owned>` whose first field it is
        // (`repr(C)`), and the caller deletes it once.
        drop(unsafe { Box::from_raw(tensor.cast::<Owned>()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch_memory::BatchMemory;

    #[test]
    fn a_tensor_describes_its_memory_and_gives_it_back_when_deleted() {
        let memory = BatchMemory::new();
        let f32 = data_type("float32").unwrap();
        let tensor = managed_tensor(memory.take(2 * 3 * 4 * 4).unwrap(), &[2, 3, 4], f32).unwrap();
        // SAFETY: `tensor` was just made and is deleted once, below.
        let t = unsafe { &(*tensor).dl_tensor };
        assert_eq!((t.ndim, t.dtype, t.device.device_type), (3, f32, CPU));
        // SAFETY: shape and strides hold `ndim` values while the tensor lives.
        let (shape, strides) = unsafe {
            (
                std::slice::from_raw_parts(t.shape, 3),
                std::slice::from_raw_parts(t.strides, 3),
            )
        };
        assert_eq!((shape, strides), (&[2, 3, 4][..], &[12, 4, 1][..]));
        assert_eq!(memory.idle(), 0);
        // SAFETY: as above; the deleter is `delete`.
        unsafe { ((*tensor).deleter.unwrap())(tensor) };
        assert_eq!(memory.idle(), 1);
        assert!(managed_tensor(memory.take(10).unwrap(), &[3], f32).is_err());
        assert_eq!(data_type("bfloat16").unwrap().code, 4);
        assert!(data_type("float8").is_err());
    }
}
