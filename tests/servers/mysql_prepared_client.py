"""Binary-protocol prepared statements against MySQL/MariaDB with the pure-Python
mysql-connector-python (COM_STMT_PREPARE once per statement, then COM_STMT_EXECUTE per call).

Usage: mysql_prepared_client.py PORT DATABASE SELECTS INSERTS CANARY

On connecting, the connector also sends two text queries: SET NAMES ... and
SET @@session.autocommit = ON.
"""
import json
import sys

import mysql.connector

port, database = int(sys.argv[1]), sys.argv[2]
selects, inserts, canary = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
conn = mysql.connector.connect(
    host="127.0.0.1", port=port, user="root", database=database, use_pure=True, autocommit=True
)
cur = conn.cursor(prepared=True)
rows = 0
for i in range(selects):
    cur.execute("SELECT name FROM items WHERE id = %s", (1 + i % 3,))
    rows += len(cur.fetchall())
for i in range(inserts):
    cur.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (1000 + i, canary))
cur.close()
conn.close()
print(json.dumps({"selects": selects, "inserts": inserts, "rows": rows}))
