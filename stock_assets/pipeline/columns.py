"""The raw files' columns and the output's, in the spec's order (section 4)."""

import pyarrow as pa

RAW_COLUMNS = ["Date", "Open", "High", "Low", "Close", "Volume", "OpenInt"]
RAW_HEADER = ",".join(RAW_COLUMNS)
PRICE_COLUMNS = ["Open", "High", "Low", "Close"]
OUTPUT_COLUMNS = [
    "stock_date",
    "open_value",
    "high_value",
    "low_value",
    "close_value",
    "volume_traded",
    "daily_percent_change",
    "value_change",
    "company_name",
]
# Every output value is text, exactly as written to the CSV and the table.
OUTPUT_SCHEMA = pa.schema([(name, pa.string()) for name in OUTPUT_COLUMNS])
