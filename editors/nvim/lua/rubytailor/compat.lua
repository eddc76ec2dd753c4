-- The few Neovim APIs the plugin needs that changed between 0.7 and 0.12, in one place.
-- Each shim uses the current API when it exists and the 0.7 one otherwise, so the rest
-- of the plugin is written once.

local M = {}

M.uv = vim.uv or vim.loop -- vim.uv from 0.10

-- From 0.11 client methods take self (client:request); calling them with a dot is
-- deprecated there. Before 0.11 they are closures: client:request would pass the
-- client as the method name.
local METHODS_TAKE_SELF = vim.fn.has("nvim-0.11") == 1

---@param lhs string  e.g. "<Tab>"
---@return string
function M.keycode(lhs)
  if vim.keycode then -- 0.10
    return vim.keycode(lhs)
  end
  return vim.api.nvim_replace_termcodes(lhs, true, true, true)
end

---Running clients, like vim.lsp.get_clients (0.10): filter = { name?, bufnr? }.
---@param filter { name: string|nil, bufnr: integer|nil }
---@return table[]
function M.get_clients(filter)
  if vim.lsp.get_clients then
    return vim.lsp.get_clients(filter)
  end
  -- 0.7 to 0.9: get_active_clients(); it takes a filter only from 0.8.
  local bufnr = filter.bufnr
  if bufnr == 0 then
    bufnr = vim.api.nvim_get_current_buf()
  end
  local found = {}
  for _, client in ipairs(vim.lsp.get_active_clients()) do
    if
      (filter.name == nil or client.name == filter.name)
      and (bufnr == nil or vim.lsp.buf_is_attached(bufnr, client.id))
    then
      table.insert(found, client)
    end
  end
  return found
end

---@return boolean ok, integer|nil request_id
function M.request(client, method, params, handler, bufnr)
  if METHODS_TAKE_SELF then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

---A notification; false when the client is gone.
---@return boolean
function M.notify(client, method, params)
  if METHODS_TAKE_SELF then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.cancel_request(client, id)
  if METHODS_TAKE_SELF then
    client:cancel_request(id)
  else
    client.cancel_request(id)
  end
end

---The nearest directory above `path` holding one of `markers`, the first marker taking
---precedence (vim.fs.root's rule); nil when none does.
---@param buf integer
---@param markers string[]
---@return string|nil
function M.root(buf, markers)
  if vim.fs and vim.fs.root then -- 0.10
    return vim.fs.root(buf, markers)
  end
  local path = vim.api.nvim_buf_get_name(buf)
  local start = path ~= "" and vim.fn.fnamemodify(path, ":p:h") or M.uv.cwd()
  for _, marker in ipairs(markers) do
    local dir = start
    while true do
      if M.uv.fs_stat(dir .. "/" .. marker) then
        return dir
      end
      local parent = vim.fn.fnamemodify(dir, ":h")
      if parent == dir then
        break
      end
      dir = parent
    end
  end
  return nil
end

---@param path string
---@return string
function M.dirname(path)
  return vim.fn.fnamemodify(path, ":h")
end

-- 0.7: clients this plugin started, by root, so a second buffer reuses its project's
-- server even while that server is still initializing (get_active_clients() lists a
-- client only once it has initialized).
local started = {} ---@type table<string, integer>

---Start the server for `config.root_dir`, or reuse the running one, and attach `buf`.
---@param config table  vim.lsp.start's config (name, cmd, root_dir, on_attach, ...)
---@param buf integer
function M.start(config, buf)
  if vim.lsp.start then -- 0.8
    vim.lsp.start(config, { bufnr = buf })
    return
  end
  local id = started[config.root_dir]
  local client = id and vim.lsp.get_client_by_id(id)
  if not client or client.is_stopped() then
    id = vim.lsp.start_client(config)
    if not id then
      return
    end
    started[config.root_dir] = id
  end
  vim.lsp.buf_attach_client(buf, id)
end

return M
