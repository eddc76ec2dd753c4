-- Ghost text: one suggestion drawn with extmarks at the cursor, never in the buffer.
-- The first line goes inline after the cursor (pushing the rest of the line right);
-- further lines go below as virtual lines.

local M = {}

M.ns = vim.api.nvim_create_namespace("rubytailor")

-- virt_text_pos = "inline" arrived in Neovim 0.10; before it, overlay is the closest.
local FIRST_LINE_POS = vim.fn.has("nvim-0.10") == 1 and "inline" or "overlay"

---@type { buf: integer, id: integer }|nil
local current = nil

-- Virtual text shows a tab as one cell; expand so the preview lines up like the insert will.
local function expand_tabs(buf, line)
  if not line:find("\t", 1, true) then
    return line
  end
  local width = vim.bo[buf].tabstop
  return (line:gsub("\t", string.rep(" ", width)))
end

---Remove the ghost text, wherever it is.
function M.clear()
  if current and vim.api.nvim_buf_is_valid(current.buf) then
    pcall(vim.api.nvim_buf_del_extmark, current.buf, M.ns, current.id)
  end
  current = nil
end

---Draw `text` as ghost text at (row, col), 0-based, byte column; replaces any earlier one.
---@param buf integer
---@param row integer
---@param col integer
---@param text string
---@param hl_group string
function M.show(buf, row, col, text, hl_group)
  local lines = vim.split(text, "\n", { plain = true })
  -- A trailing newline ends the last line; it does not start a visible empty one.
  if #lines > 1 and lines[#lines] == "" then
    table.remove(lines)
  end
  local opts = { hl_mode = "combine", priority = 1000 }
  if current and current.buf == buf then
    opts.id = current.id
  else
    M.clear()
  end
  if lines[1] ~= "" then
    opts.virt_text = { { expand_tabs(buf, lines[1]), hl_group } }
    opts.virt_text_pos = FIRST_LINE_POS
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { expand_tabs(buf, lines[i]), hl_group } })
    end
  end
  if opts.virt_text == nil and opts.virt_lines == nil then
    M.clear()
    return
  end
  local ok, id = pcall(vim.api.nvim_buf_set_extmark, buf, M.ns, row, col, opts)
  if ok then
    current = { buf = buf, id = id }
  else
    -- The position vanished under us (the line was edited): drop the preview.
    current = nil
  end
end

---@return boolean
function M.visible()
  return current ~= nil
end

return M
