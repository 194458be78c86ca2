"""The domain: what a booking event is and what it means for a calendar, without any I/O.

The published contract and the records built from it (`models`), planning an operation and
rendering a Google event (`planning`), parsing a Kafka message (`messages`), which offsets
may be committed (`offsets`), the table of Google's refusals (`refusals`) and the error tree
(`errors`). Plain functions over pydantic models and dataclasses, tested table-driven. It may
import `consumer.settings`, `consumer.logs` and the standard library, pydantic and zoneinfo;
never psycopg, aiokafka, aiohttp, google or another layer of `consumer`.
"""
