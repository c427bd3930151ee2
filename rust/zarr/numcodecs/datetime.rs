//! The numpy `datetime64` and `timedelta64` dtypes of Zarr v2 (`"<M8[ns]"`, `"<m8[s]"`, any
//! unit and multiple). zarrs reads them in v3 (`numpy.datetime64`, `numpy.timedelta64`) only;
//! these register its types for the v2 strings, so that a v2 array converts to the v3 type.
//! Their elements are int64 counts of the unit, NaT being `i64::MIN`: lsio_torch reads them as
//! int64 (see [`crate::zarr::DataType::from_name`]).

use std::num::NonZeroU32;
use std::sync::Arc;

use zarrs::array::data_type::{NumpyDateTime64DataType, NumpyTimeDelta64DataType, NumpyTimeUnit};
use zarrs_data_type::{DataType, DataTypePluginV2, DataTypeTraitsV2};
use zarrs_metadata::v2::DataTypeMetadataV2;
use zarrs_plugin::PluginCreateError;

/// `<M8[10s]`: byte order, kind, then the unit with an optional multiple.
const PATTERN: &str = r"^[<>]([Mm])8\[([0-9]*)(generic|Y|M|W|D|h|m|s|ms|us|μs|ns|ps|fs|as)\]$";

/// The v2 `datetime64` dtype strings (`<M8[unit]`).
#[derive(Debug)]
pub struct DateTime64V2;

/// The v2 `timedelta64` dtype strings (`<m8[unit]`).
#[derive(Debug)]
pub struct TimeDelta64V2;

zarrs_plugin::impl_extension_aliases!(DateTime64V2, v2: "<M8[ns]", [],
    [regex::Regex::new(&PATTERN.replace("[Mm]", "M")).expect("a valid pattern")]
);
zarrs_plugin::impl_extension_aliases!(TimeDelta64V2, v2: "<m8[ns]", [],
    [regex::Regex::new(&PATTERN.replace("[Mm]", "m")).expect("a valid pattern")]
);

inventory::submit! {
    DataTypePluginV2::new::<DateTime64V2>()
}
inventory::submit! {
    DataTypePluginV2::new::<TimeDelta64V2>()
}

/// The kind (`'M'` or `'m'`), unit and multiple of a v2 time dtype string.
fn parse(
    metadata: &DataTypeMetadataV2,
) -> Result<(char, NumpyTimeUnit, NonZeroU32), PluginCreateError> {
    let DataTypeMetadataV2::Simple(text) = metadata else {
        return Err(PluginCreateError::Other(
            "a structured dtype is not a time".into(),
        ));
    };
    let invalid = || PluginCreateError::Other(format!("{text:?} is not a numpy time dtype"));
    let captures = regex::Regex::new(PATTERN)
        .map_err(|e| PluginCreateError::Other(e.to_string()))?
        .captures(text)
        .ok_or_else(invalid)?;
    let kind = captures[1].chars().next().ok_or_else(invalid)?;
    let multiple = match &captures[2] {
        "" => NonZeroU32::MIN,
        digits => digits.parse().map_err(|_| invalid())?,
    };
    let unit: NumpyTimeUnit =
        serde_json::from_value(serde_json::Value::String(captures[3].to_string()))
            .map_err(|_| invalid())?;
    Ok((kind, unit, multiple))
}

impl DataTypeTraitsV2 for DateTime64V2 {
    fn create(metadata: &DataTypeMetadataV2) -> Result<DataType, PluginCreateError> {
        let (_, unit, multiple) = parse(metadata)?;
        Ok(Arc::new(NumpyDateTime64DataType::new(unit, multiple)).into())
    }
}

impl DataTypeTraitsV2 for TimeDelta64V2 {
    fn create(metadata: &DataTypeMetadataV2) -> Result<DataType, PluginCreateError> {
        let (_, unit, multiple) = parse(metadata)?;
        Ok(Arc::new(NumpyTimeDelta64DataType::new(unit, multiple)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(text: &str) -> Result<DataType, PluginCreateError> {
        DataType::from_metadata(&DataTypeMetadataV2::Simple(text.into()))
    }

    #[test]
    fn v2_time_strings_are_zarrs_v3_types() {
        let t = v2("<M8[ns]").unwrap();
        assert_eq!(t.name_v3().as_deref(), Some("numpy.datetime64"));
        assert_eq!(
            t,
            zarrs::array::data_type::numpy_datetime64(NumpyTimeUnit::Nanosecond, NonZeroU32::MIN)
        );
        let t = v2(">m8[10s]").unwrap();
        assert_eq!(t.name_v3().as_deref(), Some("numpy.timedelta64"));
        assert_eq!(
            t,
            zarrs::array::data_type::numpy_timedelta64(
                NumpyTimeUnit::Second,
                NonZeroU32::new(10).unwrap()
            )
        );
        assert!(v2("<M8[fortnight]").is_err());
        assert!(v2("|M8[ns]").is_err());
    }
}
