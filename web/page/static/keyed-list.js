// Lists whose rows stand for items keyed by id (tasks, notifications), drawn again after every change.

// Rows are kept and updated in place, never rebuilt, so that focus and open menus survive a render: a row
// whose item is gone is removed, a new item gets a row from create(id), and the rows follow the items' order.
export function renderKeyed(list, items, { create, fill }) {
  const rows = new Map([...list.children].map((row) => [row.dataset.id, row]));
  const keep = new Set(items.map((item) => String(item.id)));
  for (const [key, row] of rows) if (!keep.has(key)) row.remove();
  items.forEach((item, index) => {
    let row = rows.get(String(item.id));
    if (!row) {
      row = create(item.id);
      row.dataset.id = String(item.id);
    }
    fill(row, item);
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
  });
}

export function keyedRow(list, id) {
  return [...list.children].find((row) => row.dataset.id === String(id)) || null;
}
