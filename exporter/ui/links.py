"""Where the pages are, for navigation, st.page_link and st.switch_page."""

from pathlib import Path

PAGES = Path(__file__).resolve().parents[2] / "pages"
HOME = PAGES / "home.py"
NEW_EXPORT = PAGES / "new_export.py"
EXPORTS = PAGES / "exports.py"
CURATION = PAGES / "curation.py"
TOKENS = PAGES / "tokens.py"
PRIVACY = PAGES / "privacy.py"
RELEASES = PAGES / "releases.py"
