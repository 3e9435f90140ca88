"""Export Portal: everything that is not a screen. Importable without Streamlit."""
