# frozen_string_literal: true

require "json"
require "time"

# A small stock ledger: items come in, orders take them out, and a report says
# what is running low. Written for rubytailor's demo and latency benchmark.
module Inventory
  class OutOfStock < StandardError; end

  Item = Struct.new(:sku, :name, :price_cents, :quantity, keyword_init: true) do
    def total_cents
      price_cents * quantity
    end

    def to_h
      { sku: sku, name: name, price_cents: price_cents, quantity: quantity }
    end
  end

  class Ledger
    attr_reader :items

    def initialize(items = [])
      @items = items.to_h { |item| [item.sku, item] }
      @history = []
    end

    def receive(sku, quantity, name: nil, price_cents: 0)
      item = @items[sku] ||= Item.new(sku: sku, name: name || sku, price_cents: price_cents, quantity: 0)
      item.quantity += quantity
      @history << [:receive, sku, quantity, Time.now]
      item
    end

    def take(sku, quantity)
      item = @items.fetch(sku) { raise OutOfStock, "unknown item #{sku}" }
      raise OutOfStock, "only #{item.quantity} of #{sku} left" if item.quantity < quantity

      item.quantity -= quantity
      @history << [:take, sku, quantity, Time.now]
      item
    end

    def low_stock(threshold = 5)
      @items.values.select { |item| item.quantity <= threshold }.sort_by(&:quantity)
    end

    def value_cents
      @items.values.sum(&:total_cents)
    end

    def to_json(*args)
      { items: @items.values.map(&:to_h), value_cents: value_cents }.to_json(*args)
    end
  end

  class Report
    def initialize(ledger, threshold: 5)
      @ledger = ledger
      @threshold = threshold
    end

    def lines
      @ledger.low_stock(@threshold).map do |item|
        format("%-10s %-24s %5d", item.sku, item.name, item.quantity)
      end
    end

    def to_s
      header = format("%-10s %-24s %5s", "SKU", "NAME", "QTY")
      [header, *lines].join("\n")
    end
  end
end

if $PROGRAM_NAME == __FILE__
  ledger = Inventory::Ledger.new
  ledger.receive("A-100", 12, name: "Bolts", price_cents: 15)
  ledger.receive("B-200", 3, name: "Hinges", price_cents: 240)
  ledger.take("A-100", 9)
  puts Inventory::Report.new(ledger).to_s
end
