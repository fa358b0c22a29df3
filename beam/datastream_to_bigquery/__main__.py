"""``python -m beam.datastream_to_bigquery --help``; also the Flex Template's FLEX_TEMPLATE_PYTHON_PY_FILE."""

import logging
import sys

from beam.datastream_to_bigquery.pipeline import run

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run(sys.argv[1:])
