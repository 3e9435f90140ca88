"""The only Streamlit-importing part of ``exporter``: identity, cached reads, widgets."""
